//! Strided copy between two views of the same shape: `contiguous`, `assign`, `concat`.
//! Views that are a batched transpose of contiguous memory go through the tiled kernel of
//! [`super::transpose`].

use cubecl::prelude::*;

use crate::device::{record_copy, record_launch};
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

/// The tiled transpose that copies `src` into `dst`, when the copy is one.
fn as_transpose<'a>(src: &'a SsmTensor, dst: &'a SsmTensor) -> Option<transpose::Job<'a>> {
    if !dst.is_contiguous() {
        return None;
    }
    let dims = transpose::batched_transpose(src.shape(), src.strides())?;
    Some(transpose::Job { src, dst, dims })
}

/// `dst[...] = src[...]` for two pairs of views, in one launch where both copies are
/// tiled transposes of one dtype on one device; the caller checked each pair as for
/// [`copy`].
pub(crate) fn copy_pair(a: (&SsmTensor, &SsmTensor), b: (&SsmTensor, &SsmTensor)) {
    let same_kind = a.0.dtype == b.0.dtype && a.0.device == b.0.device;
    match (as_transpose(a.0, a.1), as_transpose(b.0, b.1)) {
        (Some(ja), Some(jb)) if same_kind => {
            record_copy(a.0.numel() + b.0.numel());
            transpose::transpose_pair(&ja, &jb)
        }
        _ => {
            copy(a.0, a.1);
            copy(b.0, b.1);
        }
    }
}

/// `dst[...] = src[...]`; the caller checked that shapes and dtypes match.
pub(crate) fn copy(src: &SsmTensor, dst: &SsmTensor) {
    let n = src.numel();
    if n == 0 {
        return;
    }
    record_copy(n);
    if let Some(job) = as_transpose(src, dst) {
        return transpose::transpose(&job);
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
