//! Launch geometry shared by the elementwise-style kernels.

use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

/// Threads per cube for one-element-per-thread kernels.
pub const ELEMWISE_CUBE: u32 = 256;

/// Cube count and dim covering `n` units, spilling into the y/z grid axes when `n` exceeds
/// the x limit (wgpu allows 65 535 cubes per axis). Kernels index with `ABSOLUTE_POS`,
/// which accounts for every grid axis.
pub fn elemwise_grid<R: Runtime>(client: &ComputeClient<R>, n: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new_1d(ELEMWISE_CUBE);
    let count = calculate_cube_count_elemwise(client, n.max(1), dim);
    (count, dim)
}

/// Widest vector (≤ 4 lanes) that divides every given length and offset.
pub fn vector_width(parts: &[usize]) -> usize {
    [4usize, 2]
        .into_iter()
        .find(|w| parts.iter().all(|p| p % w == 0))
        .unwrap_or(1)
}
