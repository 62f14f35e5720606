// Tests of the rectangular linear assignment solver: hand cases, degenerate
// shapes and entries, brute force over all assignments of small matrices,
// and (ScipyParity.*) the optimal cost of scipy.optimize.linear_sum_assignment
// on the cases tests/train/scipy_lsap_cases.py writes; ctest runs that script
// first and passes the file in LPDETR_LSAP_SCIPY_CASES.
#include "train/linear_assignment.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace lpdetr::train {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

using Pairs = AssignmentPairs;

// Asserts `pairs` is a complete assignment of a rows x cols matrix: min(rows,
// cols) pairs, rows ascending, no row or column twice, no +inf entry used.
void ExpectValidAssignment(const std::vector<double>& cost, int64_t rows, int64_t cols,
                           const Pairs& pairs) {
  ASSERT_EQ(static_cast<int64_t>(pairs.size()), std::min(rows, cols));
  std::set<int64_t> used_rows, used_cols;
  for (size_t k = 0; k < pairs.size(); ++k) {
    const auto [row, col] = pairs[k];
    ASSERT_GE(row, 0);
    ASSERT_LT(row, rows);
    ASSERT_GE(col, 0);
    ASSERT_LT(col, cols);
    if (k > 0) EXPECT_LT(pairs[k - 1].first, row) << "rows not ascending at pair " << k;
    EXPECT_TRUE(used_rows.insert(row).second) << "row " << row << " twice";
    EXPECT_TRUE(used_cols.insert(col).second) << "column " << col << " twice";
    EXPECT_TRUE(std::isfinite(cost[row * cols + col])) << "forbidden pair " << row << "," << col;
  }
}

// Minimum total cost over every assignment, by exhaustive enumeration of the
// injective maps from the smaller side into the larger one.
double BruteForceOptimum(const std::vector<double>& cost, int64_t rows, int64_t cols) {
  const bool by_row = rows <= cols;
  const int64_t small = by_row ? rows : cols;
  const int64_t large = by_row ? cols : rows;
  std::vector<bool> used(large, false);
  double best = kInf;
  std::function<void(int64_t, double)> extend = [&](int64_t k, double sum) {
    if (k == small) {
      best = std::min(best, sum);
      return;
    }
    for (int64_t t = 0; t < large; ++t) {
      if (used[t]) continue;
      used[t] = true;
      extend(k + 1, sum + (by_row ? cost[k * cols + t] : cost[t * cols + k]));
      used[t] = false;
    }
  };
  extend(0, 0.0);
  return best;
}

TEST(LinearAssignment, ThreeByThreeKnownOptimum) {
  const std::vector<double> cost = {4, 1, 3,  //
                                    2, 0, 5,  //
                                    3, 2, 2};
  const Pairs pairs = SolveLinearAssignment(cost.data(), 3, 3);
  EXPECT_EQ(pairs, (Pairs{{0, 1}, {1, 0}, {2, 2}}));
  EXPECT_DOUBLE_EQ(AssignmentCost(cost.data(), 3, pairs), 5.0);
}

TEST(LinearAssignment, MoreColumnsThanRows) {
  // Row 0 is cheapest at column 3, row 1 at column 3 too; the optimum gives
  // column 3 to row 1 (saving 9) and column 0 to row 0 (costing 1 more).
  const std::vector<double> cost = {2, 5, 7, 1,  //
                                    9, 9, 9, 0};
  const Pairs pairs = SolveLinearAssignment(cost.data(), 2, 4);
  EXPECT_EQ(pairs, (Pairs{{0, 0}, {1, 3}}));
}

TEST(LinearAssignment, MoreRowsThanColumns) {
  // The transpose of the case above: every column assigned, rows ascending.
  const std::vector<double> cost = {2, 9,  //
                                    5, 9,  //
                                    7, 9,  //
                                    1, 0};
  const Pairs pairs = SolveLinearAssignment(cost.data(), 4, 2);
  EXPECT_EQ(pairs, (Pairs{{0, 0}, {3, 1}}));
}

TEST(LinearAssignment, TransposedRowsComeOutAscending) {
  // Column 0 wants row 4, column 1 row 0, column 2 row 2.
  const std::vector<double> cost = {9, 0, 9,  //
                                    9, 9, 9,  //
                                    9, 9, 0,  //
                                    9, 9, 9,  //
                                    0, 9, 9};
  const Pairs pairs = SolveLinearAssignment(cost.data(), 5, 3);
  EXPECT_EQ(pairs, (Pairs{{0, 1}, {2, 2}, {4, 0}}));
}

TEST(LinearAssignment, EmptyMatricesGiveEmptyResults) {
  EXPECT_TRUE(SolveLinearAssignment(static_cast<const double*>(nullptr), 0, 0).empty());
  EXPECT_TRUE(SolveLinearAssignment(static_cast<const double*>(nullptr), 0, 5).empty());
  EXPECT_TRUE(SolveLinearAssignment(static_cast<const double*>(nullptr), 7, 0).empty());
  EXPECT_TRUE(SolveLinearAssignment(static_cast<const float*>(nullptr), 0, 3).empty());
}

TEST(LinearAssignment, OneRowTakesItsCheapestColumn) {
  const std::vector<double> cost = {3, -1, 4, 1, -5, 9};
  EXPECT_EQ(SolveLinearAssignment(cost.data(), 1, 6), (Pairs{{0, 4}}));
}

TEST(LinearAssignment, OneColumnTakesItsCheapestRow) {
  const std::vector<double> cost = {3, -1, 4, 1, -5, 9};
  EXPECT_EQ(SolveLinearAssignment(cost.data(), 6, 1), (Pairs{{4, 0}}));
}

TEST(LinearAssignment, OneByOne) {
  const double cost = 42.0;
  EXPECT_EQ(SolveLinearAssignment(&cost, 1, 1), (Pairs{{0, 0}}));
}

TEST(LinearAssignment, AllEqualEntriesGiveAnyCompleteAssignment) {
  for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{6, 6}, {4, 9}, {9, 4}}) {
    SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(cols));
    const std::vector<double> cost(rows * cols, 1.5);
    const Pairs pairs = SolveLinearAssignment(cost.data(), rows, cols);
    ExpectValidAssignment(cost, rows, cols, pairs);
    EXPECT_DOUBLE_EQ(AssignmentCost(cost.data(), cols, pairs), 1.5 * std::min(rows, cols));
  }
}

TEST(LinearAssignment, TiesKeepTheOptimalCost) {
  // Two optimal assignments (cost 2 each); either is fine.
  const std::vector<double> cost = {1, 1, 5,  //
                                    1, 1, 5};
  const Pairs pairs = SolveLinearAssignment(cost.data(), 2, 3);
  ExpectValidAssignment(cost, 2, 3, pairs);
  EXPECT_DOUBLE_EQ(AssignmentCost(cost.data(), 3, pairs), 2.0);
}

TEST(LinearAssignment, InfEntriesAreAvoidedWhenFeasible) {
  const std::vector<double> cost = {kInf, 1,     //
                                    2,    kInf};
  EXPECT_EQ(SolveLinearAssignment(cost.data(), 2, 2), (Pairs{{0, 1}, {1, 0}}));
  // The cheap entries sit in one column; the +inf entries force the others.
  const std::vector<double> wide = {0,    kInf, 7,     //
                                    0,    3,    kInf,  //
                                    kInf, kInf, 0};
  const Pairs pairs = SolveLinearAssignment(wide.data(), 3, 3);
  EXPECT_EQ(pairs, (Pairs{{0, 0}, {1, 1}, {2, 2}}));
}

TEST(LinearAssignment, InfeasibleMatrixIsAnError) {
  const std::vector<double> cost = {1, kInf,  //
                                    2, kInf};
  EXPECT_THROW(SolveLinearAssignment(cost.data(), 2, 2), std::runtime_error);
  // Two rows, three columns, but both rows can only use column 1.
  const std::vector<double> wide = {kInf, 1, kInf,  //
                                    kInf, 2, kInf};
  EXPECT_THROW(SolveLinearAssignment(wide.data(), 2, 3), std::runtime_error);
  // The same transposed (more rows than columns).
  const std::vector<double> tall = {kInf, kInf,  //
                                    1,    2,     //
                                    kInf, kInf};
  EXPECT_THROW(SolveLinearAssignment(tall.data(), 3, 2), std::runtime_error);
  const std::vector<double> all_inf(6, kInf);
  EXPECT_THROW(SolveLinearAssignment(all_inf.data(), 2, 3), std::runtime_error);
}

// Expects `fn` to throw std::invalid_argument whose message contains `part`.
template <typename Fn>
void ExpectInvalidArgument(Fn fn, const std::string& part) {
  try {
    fn();
    ADD_FAILURE() << "no exception; expected one naming '" << part << "'";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(LinearAssignment, NanIsAnErrorNamingTheEntry) {
  std::vector<double> cost(12, 1.0);
  cost[1 * 4 + 2] = std::numeric_limits<double>::quiet_NaN();
  ExpectInvalidArgument([&] { SolveLinearAssignment(cost.data(), 3, 4); }, "cost[1][2] is NaN");
  // Transposed internally, still named in the caller's coordinates.
  ExpectInvalidArgument([&] { SolveLinearAssignment(cost.data(), 4, 3); }, "cost[2][0] is NaN");
  std::vector<float> as_float(cost.begin(), cost.end());
  ExpectInvalidArgument([&] { SolveLinearAssignment(as_float.data(), 3, 4); },
                        "cost[1][2] is NaN");
}

TEST(LinearAssignment, MinusInfIsAnError) {
  std::vector<double> cost(6, 1.0);
  cost[5] = -kInf;
  ExpectInvalidArgument([&] { SolveLinearAssignment(cost.data(), 2, 3); }, "cost[1][2] is -inf");
}

TEST(LinearAssignment, NegativeSizeIsAnError) {
  const double cost = 0;
  ExpectInvalidArgument([&] { SolveLinearAssignment(&cost, -1, 3); }, "-1 x 3");
}

TEST(LinearAssignment, FloatOverloadSolvesTheConvertedMatrix) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uniform(0.f, 1.f);
  std::vector<float> cost(30 * 8);
  for (float& c : cost) c = uniform(rng);
  const std::vector<double> as_double(cost.begin(), cost.end());
  EXPECT_EQ(SolveLinearAssignment(cost.data(), 30, 8),
            SolveLinearAssignment(as_double.data(), 30, 8));
  EXPECT_EQ(SolveLinearAssignment(cost.data(), 8, 30),
            SolveLinearAssignment(as_double.data(), 8, 30));
}

TEST(LinearAssignment, MatchesBruteForceOnSmallRandomMatrices) {
  std::mt19937_64 rng(12345);
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  std::uniform_int_distribution<int> small_int(0, 3);
  int checked = 0;
  for (int64_t rows = 1; rows <= 6; ++rows) {
    for (int64_t cols = 1; cols <= 6; ++cols) {
      for (int trial = 0; trial < 30; ++trial) {
        // Even trials continuous, odd ones small integers (many ties), every
        // fifth with some forbidden entries.
        std::vector<double> cost(rows * cols);
        for (double& c : cost) c = trial % 2 == 0 ? uniform(rng) : small_int(rng);
        if (trial % 5 == 0) {
          for (double& c : cost) {
            if (small_int(rng) == 0) c = kInf;
          }
        }
        SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(cols) + " trial " +
                     std::to_string(trial));
        const double optimum = BruteForceOptimum(cost, rows, cols);
        if (optimum == kInf) {
          EXPECT_THROW(SolveLinearAssignment(cost.data(), rows, cols), std::runtime_error);
          continue;
        }
        const Pairs pairs = SolveLinearAssignment(cost.data(), rows, cols);
        ExpectValidAssignment(cost, rows, cols, pairs);
        EXPECT_NEAR(AssignmentCost(cost.data(), cols, pairs), optimum, 1e-12);
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 900);
}

TEST(LinearAssignment, TransposeHasTheSameOptimalCost) {
  std::mt19937_64 rng(99);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const int64_t rows = 120, cols = 35;
  std::vector<double> cost(rows * cols), transposed(rows * cols);
  for (double& c : cost) c = uniform(rng);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) transposed[c * rows + r] = cost[r * cols + c];
  }
  const Pairs pairs = SolveLinearAssignment(cost.data(), rows, cols);
  const Pairs pairs_t = SolveLinearAssignment(transposed.data(), cols, rows);
  ExpectValidAssignment(cost, rows, cols, pairs);
  EXPECT_NEAR(AssignmentCost(cost.data(), cols, pairs),
              AssignmentCost(transposed.data(), rows, pairs_t), 1e-12);
}

// ---- scipy parity ----------------------------------------------------------

struct ScipyCase {
  std::string name;
  int64_t rows = 0, cols = 0;
  bool is_float = false;
  bool feasible = true;
  bool unique = false;
  std::vector<float> float_cost;    // when is_float
  std::vector<double> cost;         // always (converted when is_float)
  double scipy_total = 0;
  Pairs scipy_pairs;
};

template <typename T>
std::vector<T> ReadRaw(std::istream& in, int64_t count, const std::string& what) {
  std::vector<T> values(count);
  in.read(reinterpret_cast<char*>(values.data()), static_cast<std::streamsize>(count * sizeof(T)));
  if (!in) throw std::runtime_error("scipy cases: file ends inside " + what);
  return values;
}

std::vector<ScipyCase> ReadScipyCases(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("scipy cases: cannot open " + path);
  std::string line;
  std::getline(in, line);
  if (line != "LSAPCASES 1") throw std::runtime_error("scipy cases: bad header '" + line + "'");
  std::vector<ScipyCase> cases;
  while (std::getline(in, line)) {
    std::istringstream header(line);
    ScipyCase c;
    std::string dtype, status;
    int unique = 0;
    if (!(header >> c.name >> dtype >> c.rows >> c.cols >> status >> unique)) {
      throw std::runtime_error("scipy cases: bad record line '" + line + "'");
    }
    c.is_float = dtype == "f4";
    c.feasible = status == "ok";
    c.unique = unique != 0;
    const int64_t count = c.rows * c.cols;
    if (c.is_float) {
      c.float_cost = ReadRaw<float>(in, count, c.name);
      c.cost.assign(c.float_cost.begin(), c.float_cost.end());
    } else {
      c.cost = ReadRaw<double>(in, count, c.name);
    }
    if (c.feasible) {
      const int64_t k = std::min(c.rows, c.cols);
      c.scipy_total = ReadRaw<double>(in, 1, c.name)[0];
      const std::vector<int64_t> row_ind = ReadRaw<int64_t>(in, k, c.name);
      const std::vector<int64_t> col_ind = ReadRaw<int64_t>(in, k, c.name);
      for (int64_t i = 0; i < k; ++i) c.scipy_pairs.emplace_back(row_ind[i], col_ind[i]);
    }
    cases.push_back(std::move(c));
  }
  return cases;
}

std::vector<ScipyCase> LoadScipyCasesOrFail() {
  const char* path = std::getenv("LPDETR_LSAP_SCIPY_CASES");
  if (path == nullptr || *path == '\0') {
    ADD_FAILURE() << "LPDETR_LSAP_SCIPY_CASES is not set: run through ctest, which writes the "
                     "cases with tests/train/scipy_lsap_cases.py first";
    return {};
  }
  return ReadScipyCases(path);
}

Pairs SolveCase(const ScipyCase& c) {
  return c.is_float ? SolveLinearAssignment(c.float_cost.data(), c.rows, c.cols)
                    : SolveLinearAssignment(c.cost.data(), c.rows, c.cols);
}

TEST(ScipyParity, OptimalCostEqualsScipys) {
  const std::vector<ScipyCase> cases = LoadScipyCasesOrFail();
  int feasible = 0, infeasible = 0, largest = 0;
  for (const ScipyCase& c : cases) {
    SCOPED_TRACE(c.name);
    if (!c.feasible) {
      EXPECT_THROW(SolveCase(c), std::runtime_error);
      ++infeasible;
      continue;
    }
    const Pairs pairs = SolveCase(c);
    ExpectValidAssignment(c.cost, c.rows, c.cols, pairs);
    double scale = 1.0;
    for (const auto& [row, col] : c.scipy_pairs) scale += std::abs(c.cost[row * c.cols + col]);
    EXPECT_NEAR(AssignmentCost(c.cost.data(), c.cols, pairs), c.scipy_total, 1e-9 * scale);
    largest = std::max<int>(largest, static_cast<int>(c.rows * c.cols));
    ++feasible;
  }
  // The script writes 40 feasible cases up to 1500 x 300 and 2 infeasible ones.
  EXPECT_GE(feasible, 40);
  EXPECT_GE(infeasible, 2);
  EXPECT_GE(largest, 900 * 100);
}

TEST(ScipyParity, UniqueOptimaAreScipysAssignment) {
  const std::vector<ScipyCase> cases = LoadScipyCasesOrFail();
  int checked = 0;
  for (const ScipyCase& c : cases) {
    if (!c.feasible || !c.unique) continue;
    SCOPED_TRACE(c.name);
    EXPECT_EQ(SolveCase(c), c.scipy_pairs);
    ++checked;
  }
  EXPECT_GE(checked, 20);
}

// Ties are broken like scipy's implementation (same search order, same
// preference for unassigned columns, same dual updates): equal assignments
// on the matrices built with ties too, e.g. the hybrid branch's tiled
// targets.
TEST(ScipyParity, TiedOptimaAreResolvedLikeScipy) {
  const std::vector<ScipyCase> cases = LoadScipyCasesOrFail();
  int checked = 0;
  for (const ScipyCase& c : cases) {
    if (!c.feasible || c.unique) continue;
    SCOPED_TRACE(c.name);
    EXPECT_EQ(SolveCase(c), c.scipy_pairs);
    ++checked;
  }
  EXPECT_GE(checked, 10);
}

}  // namespace
}  // namespace lpdetr::train
