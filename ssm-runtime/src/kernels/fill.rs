//! Fill a contiguous buffer with a constant.

use cubecl::prelude::*;

use crate::device::record_launch;
use crate::dispatch;
use crate::dtype::DType;
use crate::kernels::launch::elemwise_grid;
use crate::tensor::Tensor as SsmTensor;

#[cube(launch_unchecked)]
fn fill_kernel<T: Numeric>(
    out: &mut Array<T>,
    value: InputScalar,
    n: usize,
    #[define(T)] _d: StorageType,
) {
    if ABSOLUTE_POS < n {
        out[ABSOLUTE_POS] = value.get::<T>();
    }
}

/// Fill every element of the buffer behind `t` (which must be freshly allocated and
/// contiguous) with `value`.
pub(crate) fn fill(t: &SsmTensor, value: f64) {
    launch_fill(t, value, true)
}

/// Fill without counting the launch: poisoning is test instrumentation, and tests count
/// an op's launches.
fn launch_fill(t: &SsmTensor, value: f64, counted: bool) {
    let n = t.buffer_len();
    dispatch!(t.device, c => {
        let (count, dim) = elemwise_grid(c, n);
        if counted {
            record_launch();
        }
        unsafe {
            fill_kernel::launch_unchecked(
                c,
                count,
                dim,
                t.array_arg(n),
                InputScalar::new(value, t.dtype.storage()),
                n,
                t.dtype.storage(),
            )
        }
    })
}

/// Fill with a value no correct kernel produces by accident.
pub(crate) fn fill_poison(t: &SsmTensor) {
    match t.dtype {
        DType::U32 => launch_fill(t, f64::from(0xDEAD_BEEFu32), false),
        // A runtime scalar, so no NaN literal reaches the kernel source.
        _ => launch_fill(t, f64::from_bits(0x7ff8_0000_0000_0000), false),
    }
}
