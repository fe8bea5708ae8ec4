//! Batched matrix products: `cubek-matmul` first, a plain tiled kernel as fallback.
//!
//! Operands are `[batch..., M, K]` and `[batch..., K, N]` views whose two last axes are
//! row-major or column-major (transposed views need no copy); batch axes broadcast with
//! stride 0. f32 and f64 run on CUDA cores at full precision (`SimpleUnit`): tensor-core
//! strategies would round f32 operands to tf32, which PyTorch also does not do by default.

use cubecl::prelude::*;
use cubek::matmul::definition::MatmulElems;
use cubek::matmul::launch::{Strategy, launch_ref};
use cubek::std::InputBinding;

use crate::device::record_launch;
use crate::dispatch;
use crate::tensor::Tensor as SsmTensor;

/// Which implementation computes a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulImpl {
    /// `cubek-matmul`, falling back to [`MatmulImpl::Tiled`] when it refuses the problem.
    #[default]
    Auto,
    /// `cubek-matmul` only; its refusal is an error.
    Cubek,
    /// The plain shared-memory tiled kernel of this module.
    Tiled,
}

const TILE: usize = 16;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn matmul_tiled<F: Float>(
    a: &Tensor<F>,
    b: &Tensor<F>,
    out: &mut Tensor<F>,
    a_off: usize,
    b_off: usize,
    m: usize,
    n: usize,
    k: usize,
    n_batch: usize,
    #[comptime] tile: usize,
    #[define(F)] _d: StorageType,
) {
    let rank = out.rank();
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let row = CUBE_POS_Y as usize * tile + ty;
    let col = CUBE_POS_X as usize * tile + tx;
    let mut a_tile = SharedMemory::<F>::new(tile * tile);
    let mut b_tile = SharedMemory::<F>::new(tile * tile);
    let (sam, sak) = (a.stride(rank - 2), a.stride(rank - 1));
    let (sbk, sbn) = (b.stride(rank - 2), b.stride(rank - 1));
    let mut batch = CUBE_POS_Z as usize;
    while batch < n_batch {
        let mut rem = batch;
        let mut ao = a_off;
        let mut bo = b_off;
        let mut oo = 0;
        for i in 0..rank - 2 {
            let d = rank - 3 - i;
            let size = out.shape(d);
            let c = rem % size;
            rem /= size;
            ao += c * a.stride(d);
            bo += c * b.stride(d);
            oo += c * out.stride(d);
        }
        let mut acc = F::new(0.0);
        let n_tiles = k.div_ceil(tile);
        for t in 0..n_tiles {
            let ak = t * tile + tx;
            let bk = t * tile + ty;
            a_tile[ty * tile + tx] = if row < m && ak < k {
                a[ao + row * sam + ak * sak]
            } else {
                F::new(0.0)
            };
            b_tile[ty * tile + tx] = if bk < k && col < n {
                b[bo + bk * sbk + col * sbn]
            } else {
                F::new(0.0)
            };
            sync_cube();
            #[unroll]
            for j in 0..tile {
                acc += a_tile[ty * tile + j] * b_tile[j * tile + tx];
            }
            sync_cube();
        }
        if row < m && col < n {
            out[oo + row * out.stride(rank - 2) + col * out.stride(rank - 1)] = acc;
        }
        batch += CUBE_COUNT_Z as usize;
    }
}

/// `out = a @ b`. `a` and `b` are already broadcast to `[batch..., M, K]` and
/// `[batch..., K, N]` views (same rank as `out`, which is fresh and contiguous).
/// Returns the implementation that ran, or cubek's refusal when `which` is `Cubek`.
pub(crate) fn matmul(
    a: &SsmTensor,
    b: &SsmTensor,
    out: &SsmTensor,
    which: MatmulImpl,
) -> Result<MatmulImpl, String> {
    if which != MatmulImpl::Tiled {
        match cubek(a, b, out) {
            Ok(()) => return Ok(MatmulImpl::Cubek),
            Err(e) if which == MatmulImpl::Cubek => return Err(e),
            Err(_) => {}
        }
    }
    tiled(a, b, out);
    Ok(MatmulImpl::Tiled)
}

/// A view cubek accepts: element offset 0 and a unit stride on one of the two last axes.
pub(crate) fn cubek_compatible(t: &SsmTensor) -> bool {
    let r = t.rank();
    t.offset == 0 && (t.strides[r - 1] == 1 || t.strides[r - 2] == 1)
}

fn cubek(a: &SsmTensor, b: &SsmTensor, out: &SsmTensor) -> Result<(), String> {
    if !cubek_compatible(a) || !cubek_compatible(b) {
        return Err("operand layout not supported by cubek".into());
    }
    let dtype = a.dtype.storage();
    dispatch!(a.device, c => {
        let bind = |t: &SsmTensor| unsafe {
            TensorBinding::from_raw_parts(t.handle.clone(), t.strides.clone().into(), t.shape.clone().into())
        };
        let mut elems = MatmulElems::from_single_dtype(cubecl::ir::Type::new(dtype));
        record_launch();
        launch_ref(
            &Strategy::SimpleUnit(Default::default()),
            c,
            InputBinding::Normal(bind(a), dtype),
            InputBinding::Normal(bind(b), dtype),
            bind(out),
            &mut elems,
        )
        .map_err(|e| format!("{e:?}"))
    })
}

fn tiled(a: &SsmTensor, b: &SsmTensor, out: &SsmTensor) {
    let r = out.rank();
    let (m, n, k) = (out.shape[r - 2], out.shape[r - 1], a.shape[r - 1]);
    let n_batch: usize = out.shape[..r - 2].iter().product();
    if m * n * n_batch == 0 {
        return;
    }
    dispatch!(a.device, c => {
        let max_z = c.properties().hardware.max_cube_count.2.max(1) as usize;
        let count = CubeCount::Static(
            n.div_ceil(TILE) as u32,
            m.div_ceil(TILE) as u32,
            n_batch.min(max_z) as u32,
        );
        record_launch();
        unsafe {
            matmul_tiled::launch_unchecked(
                c,
                count,
                CubeDim::new_2d(TILE as u32, TILE as u32),
                a.arg(),
                b.arg(),
                out.arg(),
                a.offset,
                b.offset,
                m,
                n,
                k,
                n_batch,
                TILE,
                a.dtype.storage(),
            )
        }
    })
}
