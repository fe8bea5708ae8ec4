//! Element-type conversion of a strided view into a fresh contiguous tensor.

use cubecl::prelude::*;

use crate::device::record_launch;
use crate::dispatch;
use crate::kernels::launch::elemwise_grid;
use crate::tensor::Tensor as SsmTensor;

/// `dst[i] = O(src[view index i])`: round to nearest even when narrowing (CUDA's
/// `__double2bfloat16` rounds once, not through f32).
#[cube(launch_unchecked)]
fn cast_kernel<I: Numeric, O: Numeric>(
    src: &Tensor<I>,
    dst: &mut Array<O>,
    src_off: usize,
    n: usize,
    #[define(I, O)] _d: [StorageType; 2],
) {
    let i = ABSOLUTE_POS;
    if i < n {
        let mut rem = i;
        let mut si = src_off;
        let rank = src.rank();
        for k in 0..rank {
            let d = rank - 1 - k;
            let size = src.shape(d);
            si += (rem % size) * src.stride(d);
            rem /= size;
        }
        dst[i] = O::cast_from(src[si]);
    }
}

/// Convert `src` into `dst` (contiguous, same shape); the caller checked the dtypes.
pub(crate) fn cast(src: &SsmTensor, dst: &SsmTensor) {
    let n = src.numel();
    if n == 0 {
        return;
    }
    dispatch!(src.device, c => {
        let (count, dim) = elemwise_grid(c, n);
        record_launch();
        unsafe {
            cast_kernel::launch_unchecked(
                c,
                count,
                dim,
                src.arg(),
                dst.array_arg(n),
                src.offset,
                n,
                [src.dtype.storage(), dst.dtype.storage()],
            )
        }
    })
}
