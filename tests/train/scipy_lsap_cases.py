"""Writes linear assignment cases with scipy's optimum, for linear_assignment_test.

Usage: scipy_lsap_cases.py OUT_FILE

Each case is a random or degenerate cost matrix solved by
scipy.optimize.linear_sum_assignment. The file holds, after the line
"LSAPCASES 1", one record per case:
  a text line "name dtype rows cols status unique"
    dtype: f8 or f4 (the matrix's element type; scipy converts f4 to f8)
    status: ok, or infeasible (scipy raised ValueError for the +inf entries)
    unique: 1 when the optimum is unique with probability one (continuous
            random entries), 0 for matrices built with ties
  the matrix, rows * cols little-endian elements of dtype, row-major
  when ok: scipy's total cost (float64, summed in double over its pairs),
           then its row indices and column indices (int64, min(rows, cols) each)
"""

import sys

import numpy as np
from scipy.optimize import linear_sum_assignment


def random_cases(rng):
    shapes = [(1, 1), (1, 7), (7, 1), (2, 3), (3, 2), (5, 5), (8, 3), (10, 40), (40, 10),
              (100, 100), (50, 900), (900, 50), (900, 100), (100, 900), (300, 1500),
              (1500, 300)]
    for rows, cols in shapes:
        yield f"uniform_{rows}x{cols}", rng.random((rows, cols)), 1
    for rows, cols in [(30, 30), (900, 20), (20, 900)]:
        yield f"normal_{rows}x{cols}", rng.normal(size=(rows, cols)), 1
        yield f"offset_1e6_{rows}x{cols}", 1e6 + rng.random((rows, cols)), 1
    for rows, cols in [(7, 7), (300, 40), (900, 100)]:
        matrix = rng.random((rows, cols)).astype(np.float32)
        yield f"float32_{rows}x{cols}", matrix, 1


def degenerate_cases(rng):
    for rows, cols in [(30, 30), (60, 20), (20, 60), (900, 50)]:
        yield f"small_integers_{rows}x{cols}", rng.integers(0, 4, (rows, cols)).astype(np.float64), 0
    for rows, cols in [(10, 10), (10, 30), (30, 10)]:
        yield f"all_equal_{rows}x{cols}", np.full((rows, cols), 2.5), 0
    yield "all_zero_900x50", np.zeros((900, 50)), 0
    # Target list tiled six times, like the hybrid branch: exact ties between copies.
    yield "tiled_targets_900x60", np.tile(rng.random((900, 10)), (1, 6)), 0
    yield "duplicated_rows_40x12", np.repeat(rng.random((20, 12)), 2, axis=0), 0
    yield "float32_integers_50x200", rng.integers(0, 3, (50, 200)).astype(np.float32), 0


def forbidden_cases(rng):
    """Matrices with +inf entries: feasible ones, and infeasible ones."""
    for rows, cols, share in [(6, 6, 0.5), (20, 20, 0.6), (50, 300, 0.9), (300, 50, 0.9)]:
        for attempt in range(100):
            matrix = rng.random((rows, cols))
            matrix[rng.random((rows, cols)) < share] = np.inf
            try:
                linear_sum_assignment(matrix)
            except ValueError:
                continue
            yield f"inf_feasible_{rows}x{cols}", matrix, 1
            break
        else:
            raise RuntimeError(f"no feasible {rows}x{cols} matrix with {share:.0%} +inf found")
    matrix = rng.random((5, 5))
    matrix[:, 1:] = np.inf  # every row needs column 0
    yield "inf_infeasible_5x5", matrix, 1
    matrix = rng.random((4, 9))
    matrix[:3, 3:] = np.inf  # three rows share two usable columns
    matrix[:3, 2] = np.inf
    yield "inf_infeasible_4x9", matrix, 1


def write_case(out, name, matrix, unique):
    rows, cols = matrix.shape
    dtype = "f4" if matrix.dtype == np.float32 else "f8"
    try:
        row_ind, col_ind = linear_sum_assignment(matrix)
        status = "ok"
    except ValueError:
        status = "infeasible"
    out.write(f"{name} {dtype} {rows} {cols} {status} {unique}\n".encode())
    out.write(np.ascontiguousarray(matrix, dtype="<" + dtype).tobytes())
    if status == "ok":
        as_double = matrix.astype(np.float64)
        total = 0.0
        for r, c in zip(row_ind, col_ind):
            total += float(as_double[r, c])
        out.write(np.array([total], dtype="<f8").tobytes())
        out.write(np.asarray(row_ind, dtype="<i8").tobytes())
        out.write(np.asarray(col_ind, dtype="<i8").tobytes())


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    rng = np.random.default_rng(20240611)
    count = 0
    with open(sys.argv[1], "wb") as out:
        out.write(b"LSAPCASES 1\n")
        for generator in (random_cases, degenerate_cases, forbidden_cases):
            for name, matrix, unique in generator(rng):
                write_case(out, name, matrix, unique)
                count += 1
    print(f"wrote {count} cases to {sys.argv[1]}")


if __name__ == "__main__":
    main()
