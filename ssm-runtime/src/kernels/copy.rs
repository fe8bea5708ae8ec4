//! Strided copy between two views of the same shape: `contiguous`, `assign`, `concat`.
//! Views that are a batched transpose of contiguous memory go through the tiled kernel of
//! [`super::transpose`].

use cubecl::prelude::*;

use crate::device::record_launch;
use crate::dispatch;
use crate::kernels::launch::elemwise_grid;
use crate::kernels::transpose;
use crate::tensor::Tensor as SsmTensor;

#[cube(launch_unchecked)]
fn copy_kernel<T: Numeric>(
    src: &Tensor<T>,
    dst: &mut Tensor<T>,
    src_off: usize,
    dst_off: usize,
    n: usize,
    #[define(T)] _d: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < n {
        let mut rem = i;
        let mut si = src_off;
        let mut di = dst_off;
        let rank = src.rank();
        for k in 0..rank {
            let d = rank - 1 - k;
            let size = src.shape(d);
            let c = rem % size;
            rem /= size;
            si += c * src.stride(d);
            di += c * dst.stride(d);
        }
        dst[di] = src[si];
    }
}

/// `dst[...] = src[...]`; the caller checked that shapes and dtypes match.
pub(crate) fn copy(src: &SsmTensor, dst: &SsmTensor) {
    let n = src.numel();
    if n == 0 {
        return;
    }
    if dst.is_contiguous()
        && let Some((batch, rows, cols)) = transpose::batched_transpose(src.shape(), src.strides())
    {
        return transpose::transpose(src, dst, batch, rows, cols);
    }
    dispatch!(src.device, c => {
        let (count, dim) = elemwise_grid(c, n);
        record_launch();
        unsafe {
            copy_kernel::launch_unchecked(
                c,
                count,
                dim,
                src.arg(),
                dst.arg(),
                src.offset,
                dst.offset,
                n,
                src.dtype.storage(),
            )
        }
    })
}
