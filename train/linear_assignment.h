// Exact rectangular linear assignment (minimum-cost bipartite matching), the
// solver behind the Hungarian matcher. Plain C++17, no LibTorch.
//
// The solver is a shortest augmenting path method (Jonker-Volgenant style,
// as described by Crouse, "On implementing 2D rectangular assignment
// algorithms", 2016): one Dijkstra search over reduced costs per row of the
// smaller side, with dual variables kept in double precision. A problem with
// more rows than columns is solved transposed, so the number of searches is
// always min(rows, cols). Among equally cheap candidates the search prefers
// an unassigned column, and it visits the columns and updates the duals in
// the same order as scipy.optimize.linear_sum_assignment, so it breaks ties
// like scipy (tests compare the assignments on tied matrices too).
//
// Semantics follow scipy.optimize.linear_sum_assignment: min(rows, cols)
// pairs are returned, sorted by row; every row (or every column, whichever
// side is smaller) is assigned. +inf marks a forbidden pair; NaN and -inf are
// rejected. Threading: the functions are reentrant (no shared state); each
// call allocates O(rows + cols) scratch memory, plus a transposed copy of the
// matrix when rows > cols (or a double copy for the float overload).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace lpdetr::train {

// (row, col) pairs of an optimal assignment, rows ascending.
using AssignmentPairs = std::vector<std::pair<int64_t, int64_t>>;

// Minimises the sum of cost[row * cols + col] over the returned pairs.
// `cost` is row-major rows x cols (may be null when rows or cols is 0; then
// the result is empty). Throws std::invalid_argument for negative sizes and
// for a NaN or -inf entry (naming its position), std::runtime_error when no
// assignment of min(rows, cols) pairs avoids the +inf entries.
AssignmentPairs SolveLinearAssignment(const double* cost, int64_t rows, int64_t cols);

// Same on a float matrix: every entry is converted to double first, as scipy
// does with a float32 array.
AssignmentPairs SolveLinearAssignment(const float* cost, int64_t rows, int64_t cols);

// Sum of cost[row * cols + col] over `pairs` (in double).
double AssignmentCost(const double* cost, int64_t cols, const AssignmentPairs& pairs);

}  // namespace lpdetr::train
