//! Running fused elementwise programs on tensors.

use crate::error::{Error, Result};
use crate::kernels::fused::{Inst, Program, launch};
use crate::ops::elementwise::require_float;
use crate::shape::broadcast_shapes;
use crate::tensor::{Tensor, same_device};

/// Check that every operand refers to an earlier instruction and every input, scalar and
/// output index is in range.
pub fn validate(prog: &Program) -> Result<()> {
    let op = "fused program";
    for (k, inst) in prog.insts.iter().enumerate() {
        let ok = match *inst {
            Inst::Input(j) => j < prog.inputs,
            Inst::Scalar(j) => j < prog.scalars,
            Inst::Const(_) => true,
            Inst::Unary(_, a) | Inst::PowConst(a, _) => (a as usize) < k,
            Inst::Binary(_, a, b) => (a as usize) < k && (b as usize) < k,
        };
        if !ok {
            return Err(Error::arg(
                op,
                format!("instruction {k} ({inst:?}) refers outside the program"),
            ));
        }
    }
    if prog.outputs.is_empty() || prog.outputs.iter().any(|&o| o as usize >= prog.insts.len()) {
        return Err(Error::arg(
            op,
            format!(
                "outputs {:?} are not instructions of the program",
                prog.outputs
            ),
        ));
    }
    Ok(())
}

/// Evaluate `prog` elementwise over `inputs` (NumPy broadcasting) with runtime `scalars`,
/// in one kernel launch. Returns one tensor per program output, all of the broadcast
/// shape (views of one buffer).
pub fn run_fused(prog: &Program, inputs: &[&Tensor], scalars: &[f64]) -> Result<Vec<Tensor>> {
    let op = "fused";
    validate(prog)?;
    if inputs.len() != prog.inputs as usize || scalars.len() != prog.scalars as usize {
        return Err(Error::arg(
            op,
            format!(
                "program takes {} tensors and {} scalars, got {} and {}",
                prog.inputs,
                prog.scalars,
                inputs.len(),
                scalars.len()
            ),
        ));
    }
    let first = inputs
        .first()
        .ok_or_else(|| Error::arg(op, "a fused program needs at least one tensor input"))?;
    require_float(op, first)?;
    let mut shape = first.shape().to_vec();
    for (i, t) in inputs.iter().enumerate() {
        same_device(op, first, t)?;
        if t.dtype() != first.dtype() {
            return Err(Error::dtype(
                op,
                format!(
                    "input 0 is {} but input {i} is {}",
                    first.dtype(),
                    t.dtype()
                ),
            ));
        }
        shape = broadcast_shapes(op, &shape, t.shape())?;
    }
    let device = first.device();
    let dtype = first.dtype();
    let n: usize = shape.iter().product();
    let outs = prog.outputs.len();
    let out = Tensor::empty(&[outs * n], dtype, device);
    let offsets: Vec<u32> = inputs.iter().map(|t| t.offset() as u32).collect();
    let offsets = Tensor::from_slice(&offsets, &[offsets.len()], device)?;
    let scalar_t = if scalars.is_empty() {
        Tensor::zeros(&[1], dtype, device)?
    } else {
        Tensor::from_f64(scalars, &[scalars.len()], dtype, device)?
    };
    // Operands are broadcast views: give the kernel the same rank everywhere.
    let views: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.expand(&shape))
        .collect::<Result<_>>()?;
    let refs: Vec<&Tensor> = views.iter().collect();
    launch(prog, &refs, &scalar_t, &offsets, &out, &shape);
    (0..outs)
        .map(|j| out.narrow(0, j * n, n)?.reshape(&shape))
        .collect()
}
