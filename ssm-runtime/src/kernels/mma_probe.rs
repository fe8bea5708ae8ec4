//! The `mma.sync` ceiling of a device: warps that do nothing but tensor-core products
//! from registers, the throughput no kernel built on CubeCL's manual MMA can pass.
//!
//! The pipelined convolutions (`conv_pipe`) issue the same instructions
//! (16×8×16 bf16, 16×8×8 TF32, f32 accumulators); timing this probe in the same session
//! says how much of the gap to cuDNN (which reaches Hopper's `wgmma`, which CubeCL 0.10
//! does not emit) is left to operand movement and how much is the instruction itself.
//! Every warp keeps `CHAINS` independent accumulators so no product waits on the one
//! before it.

use cubecl::prelude::*;

use crate::device::{Device, record_launch};
use crate::dispatch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::conv_mma::fragment;
use crate::tensor::Tensor;

/// Independent accumulators a warp cycles through (covers the MMA latency).
pub const CHAINS: usize = 8;
/// Warps per cube.
const WARPS: u32 = 8;

/// `reps` rounds of [`CHAINS`] products per warp, all operands `one`; every lane then
/// writes the sum of its accumulator elements (`CHAINS · 4 · reps · mk · one²`), which
/// both keeps the products live and lets a test count them.
#[cube(launch_unchecked)]
fn mma_loop<M: Float>(
    dst: &mut Array<f32>,
    one: f32,
    reps: u32,
    #[comptime] mk: usize,
    #[define(M)] _m: StorageType,
) {
    let def = cmma::MmaDefinition::<M, M, f32>::new(16usize, 8usize, mk);
    let size!(NA) = def.vector_size(cmma::MatrixIdent::A);
    let size!(NB) = def.vector_size(cmma::MatrixIdent::B);
    let size!(NC) = def.vector_size(cmma::MatrixIdent::Accumulator);
    let va = def.vectors_per_lane(cmma::MatrixIdent::A);
    let vb = def.vectors_per_lane(cmma::MatrixIdent::B);
    let vc = def.vectors_per_lane(cmma::MatrixIdent::Accumulator);
    let sc = def.vector_size(cmma::MatrixIdent::Accumulator);
    let mut a = Array::<Vector<M, NA>>::new(va);
    #[unroll]
    for e in 0..va {
        a[e] = Vector::new(M::cast_from(one));
    }
    let mut b = Array::<Vector<M, NB>>::new(vb);
    #[unroll]
    for e in 0..vb {
        b[e] = Vector::new(M::cast_from(one));
    }
    let mut acc = Sequence::<Array<Vector<f32, NC>>>::new();
    #[unroll]
    for _ in 0..CHAINS {
        let mut c = Array::<Vector<f32, NC>>::new(vc);
        #[unroll]
        for h in 0..vc {
            c[h] = Vector::new(0.0f32);
        }
        acc.push(c);
    }
    for _ in 0..reps {
        #[unroll]
        for c in 0..CHAINS {
            def.execute_inplace(&a, &b, acc.index_mut(c));
        }
    }
    let mut total = 0.0f32;
    #[unroll]
    for c in 0..CHAINS {
        #[unroll]
        for h in 0..vc {
            let v = acc.index(c)[h];
            #[unroll]
            for e in 0..sc {
                total += v[e];
            }
        }
    }
    dst[ABSOLUTE_POS] = total;
}

/// FLOPs of one [`mma_peak`] launch.
pub fn mma_peak_flops(dtype: DType, cubes: usize, reps: usize) -> u64 {
    let (_, mk) = fragment(dtype);
    let warps = cubes as u64 * WARPS as u64;
    warps * (CHAINS * reps) as u64 * 2 * 16 * 8 * mk as u64
}

/// Launch `cubes` cubes of 8 warps, each warp doing `reps · CHAINS` tensor-core products
/// of `dtype` (bf16, or f32 as TF32) from registers holding `one`. Returns each lane's sum
/// of its accumulators, `[cubes · 256]` f32. Refused where the device has no `mma.sync`
/// for `dtype`.
pub fn mma_peak(
    device: &Device,
    dtype: DType,
    cubes: usize,
    reps: usize,
    one: f32,
) -> Result<Tensor> {
    if !device.has_pipelined_mma(dtype) {
        return Err(Error::arg(
            "mma_peak",
            format!("{} has no mma.sync for {dtype:?}", device.name()),
        ));
    }
    if cubes == 0 || cubes > u16::MAX as usize || reps > u32::MAX as usize {
        return Err(Error::arg(
            "mma_peak",
            format!("cubes must lie in 1..=65535 and reps fit u32 (got {cubes}, {reps})"),
        ));
    }
    let lanes = cubes * 32 * WARPS as usize;
    let out = Tensor::empty(&[lanes], DType::F32, device);
    let (frag_ty, mk) = fragment(dtype);
    dispatch!(device, c => {
        record_launch();
        unsafe {
            mma_loop::launch_unchecked(
                c,
                CubeCount::Static(cubes as u32, 1, 1),
                CubeDim::new_2d(32, WARPS),
                out.array_arg(lanes),
                one,
                reps as u32,
                mk,
                frag_ty,
            )
        }
    });
    Ok(out)
}
