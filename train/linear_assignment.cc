#include "train/linear_assignment.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace lpdetr::train {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

void CheckSizes(const void* cost, int64_t rows, int64_t cols) {
  if (rows < 0 || cols < 0) {
    throw std::invalid_argument("linear assignment: negative matrix size " +
                                std::to_string(rows) + " x " + std::to_string(cols));
  }
  if (rows > 0 && cols > 0 && cost == nullptr) {
    throw std::invalid_argument("linear assignment: null cost matrix of size " +
                                std::to_string(rows) + " x " + std::to_string(cols));
  }
}

// Throws for an entry the solver cannot use (NaN, -inf), naming it by its
// position in the caller's matrix.
void CheckEntry(double value, int64_t row, int64_t col) {
  if (std::isnan(value) || value == -kInf) {
    throw std::invalid_argument("linear assignment: cost[" + std::to_string(row) + "][" +
                                std::to_string(col) + "] is " +
                                (std::isnan(value) ? "NaN" : "-inf") +
                                " (entries must be finite or +inf)");
  }
}

// The problem as the solver sees it: n x m row-major with n <= m, pointing
// either at the caller's matrix or at a converted / transposed copy.
struct WideMatrix {
  const double* data = nullptr;
  int64_t n = 0;
  int64_t m = 0;
  bool transposed = false;
  std::vector<double> storage;
};

template <typename T>
void PrepareWide(const T* cost, int64_t rows, int64_t cols, WideMatrix* wide) {
  wide->transposed = rows > cols;
  wide->n = std::min(rows, cols);
  wide->m = std::max(rows, cols);
  if constexpr (std::is_same_v<T, double>) {
    if (!wide->transposed) {  // used in place
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) CheckEntry(cost[r * cols + c], r, c);
      }
      wide->data = cost;
      return;
    }
  }
  wide->storage.resize(static_cast<size_t>(rows * cols));
  double* out = wide->storage.data();
  if (!wide->transposed) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const double value = static_cast<double>(cost[r * cols + c]);
        CheckEntry(value, r, c);
        out[r * cols + c] = value;
      }
    }
  } else {
    // Tiles keep both the reads and the strided writes in cache.
    constexpr int64_t kTile = 32;
    for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
      for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
        const int64_t r1 = std::min(rows, r0 + kTile), c1 = std::min(cols, c0 + kTile);
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t c = c0; c < c1; ++c) {
            const double value = static_cast<double>(cost[r * cols + c]);
            CheckEntry(value, r, c);
            out[c * rows + r] = value;
          }
        }
      }
    }
  }
  wide->data = out;
}

// Shortest augmenting path solver on an n x m matrix, n <= m. Assigns the
// rows one after another; each row costs one Dijkstra search over the
// reduced costs cost[i][j] - u[i] - v[j], which stay non-negative on every
// edge, zero on the assigned ones.
class ShortestPathSolver {
 public:
  explicit ShortestPathSolver(const WideMatrix& matrix)
      : cost_(matrix.data),
        n_(matrix.n),
        m_(matrix.m),
        u_(n_, 0.0),
        v_(m_, 0.0),
        col4row_(n_, -1),
        row4col_(m_, -1),
        path_(m_, -1),
        dist_(m_, kInf),
        remaining_(m_) {
    visited_rows_.reserve(n_);
    visited_cols_.reserve(n_);
  }

  // Solves; col4row()[i] is then the column of row i.
  void Solve() {
    for (int64_t row = 0; row < n_; ++row) {
      double path_cost = 0;
      const int64_t sink = Augment(row, &path_cost);
      if (sink < 0) {
        throw std::runtime_error(
            "linear assignment: infeasible cost matrix: the +inf entries leave no "
            "assignment of all " + std::to_string(n_) + " rows of the smaller side (" +
            std::to_string(n_) + " x " + std::to_string(m_) + " after orienting)");
      }
      UpdateDuals(row, path_cost);
      FlipPath(row, sink);
    }
  }

  const std::vector<int64_t>& col4row() const { return col4row_; }

 private:
  // Dijkstra from `start` until it reaches an unassigned column (the sink,
  // returned; -1 when none is reachable). *path_cost is the sink's distance.
  // Records the scanned rows and the settled columns for UpdateDuals.
  int64_t Augment(int64_t start, double* path_cost) {
    visited_rows_.clear();
    visited_cols_.clear();
    std::fill(dist_.begin(), dist_.end(), kInf);
    int64_t num_remaining = m_;
    for (int64_t k = 0; k < m_; ++k) remaining_[k] = m_ - 1 - k;

    double min_val = 0;
    int64_t i = start;
    while (true) {
      visited_rows_.push_back(i);
      const double* cost_row = cost_ + i * m_;
      const double u_i = u_[i];
      int64_t best = -1;
      double lowest = kInf;
      for (int64_t k = 0; k < num_remaining; ++k) {
        const int64_t j = remaining_[k];
        const double reduced = min_val + cost_row[j] - u_i - v_[j];
        if (reduced < dist_[j]) {
          path_[j] = i;
          dist_[j] = reduced;
        }
        // Ties go to an unassigned column: the search can end there.
        if (dist_[j] < lowest || (dist_[j] == lowest && row4col_[j] < 0)) {
          lowest = dist_[j];
          best = k;
        }
      }
      if (best < 0 || lowest == kInf) return -1;
      min_val = lowest;
      const int64_t j = remaining_[best];
      visited_cols_.push_back(j);
      remaining_[best] = remaining_[--num_remaining];
      if (row4col_[j] < 0) {
        *path_cost = min_val;
        return j;
      }
      i = row4col_[j];
    }
  }

  // Keeps the reduced costs non-negative and zero on the new path.
  void UpdateDuals(int64_t start, double path_cost) {
    u_[start] += path_cost;
    for (int64_t i : visited_rows_) {
      if (i != start) u_[i] += path_cost - dist_[col4row_[i]];
    }
    // The sink is settled too; its own term is zero.
    for (int64_t j : visited_cols_) v_[j] -= path_cost - dist_[j];
  }

  // Assigns along the path from the sink back to `start`.
  void FlipPath(int64_t start, int64_t sink) {
    int64_t j = sink;
    while (true) {
      const int64_t i = path_[j];
      row4col_[j] = i;
      std::swap(col4row_[i], j);
      if (i == start) break;
    }
  }

  const double* cost_;
  int64_t n_, m_;
  std::vector<double> u_, v_;
  std::vector<int64_t> col4row_, row4col_, path_;
  std::vector<double> dist_;
  std::vector<int64_t> remaining_;
  std::vector<int64_t> visited_rows_, visited_cols_;
};

template <typename T>
AssignmentPairs Solve(const T* cost, int64_t rows, int64_t cols) {
  CheckSizes(cost, rows, cols);
  if (rows == 0 || cols == 0) return {};
  WideMatrix wide;
  PrepareWide(cost, rows, cols, &wide);
  ShortestPathSolver solver(wide);
  solver.Solve();
  const std::vector<int64_t>& col4row = solver.col4row();
  AssignmentPairs pairs;
  pairs.reserve(col4row.size());
  for (int64_t i = 0; i < wide.n; ++i) {
    if (wide.transposed) {
      pairs.emplace_back(col4row[i], i);
    } else {
      pairs.emplace_back(i, col4row[i]);
    }
  }
  if (wide.transposed) std::sort(pairs.begin(), pairs.end());
  return pairs;
}

}  // namespace

AssignmentPairs SolveLinearAssignment(const double* cost, int64_t rows, int64_t cols) {
  return Solve(cost, rows, cols);
}

AssignmentPairs SolveLinearAssignment(const float* cost, int64_t rows, int64_t cols) {
  return Solve(cost, rows, cols);
}

double AssignmentCost(const double* cost, int64_t cols, const AssignmentPairs& pairs) {
  double total = 0;
  for (const auto& [row, col] : pairs) total += cost[row * cols + col];
  return total;
}

}  // namespace lpdetr::train
