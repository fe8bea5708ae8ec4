//! Offsets in strided views whose kept axes come first and reduced axes last, shared by the
//! reduction ([`super::reduce`]) and row ([`super::rows`]) kernels. `shape_src` gives the
//! common shape, `t` the strides of the operand read (broadcast operands have stride 0).

use cubecl::prelude::*;

/// Offset of item `o` (kept coordinates, axes `..k_rank`) in operand `t`, from `off0`.
#[cube]
pub(crate) fn item_offset<F: Float>(
    shape_src: &Tensor<F>,
    t: &Tensor<F>,
    off0: usize,
    o: usize,
    k_rank: usize,
) -> usize {
    let mut off = off0;
    let mut rem = o;
    for k in 0..k_rank {
        let d = k_rank - 1 - k;
        let size = shape_src.shape(d);
        off += (rem % size) * t.stride(d);
        rem /= size;
    }
    off
}

/// Offset of reduced index `r` (below the reduced length; at least one reduced axis) in
/// operand `t`, from `base`, which already covers the kept axes: one multiply when the
/// reduced axes are one (`single_axis`), else a decode over axes `k_rank..` in which the
/// outermost takes what is left whole.
#[cube]
pub(crate) fn elem_offset<F: Float>(
    shape_src: &Tensor<F>,
    t: &Tensor<F>,
    base: usize,
    r: usize,
    k_rank: usize,
    #[comptime] single_axis: bool,
) -> usize {
    let rank = shape_src.rank();
    if single_axis {
        base + r * t.stride(rank - 1)
    } else {
        let mut off = base;
        let mut rr = r;
        for k in 0..rank - k_rank - 1 {
            let d = rank - 1 - k;
            let size = shape_src.shape(d);
            off += (rr % size) * t.stride(d);
            rr /= size;
        }
        off + rr * t.stride(k_rank)
    }
}
