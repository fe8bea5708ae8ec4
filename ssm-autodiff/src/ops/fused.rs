//! Fused elementwise programs on the tape (what the DSL's pointwise expressions become).

use ssm_runtime::{Error, Program, Result, run_fused};

use crate::var::Var;

impl Var {
    /// Evaluate the one-output program `fwd` over `inputs` (broadcasting) in one kernel,
    /// and record `bwd` as its backward: `bwd` takes the forward inputs followed by the
    /// output gradient and returns one gradient per forward input, also in one kernel.
    /// Gradients of broadcast inputs are then summed back to their shapes.
    pub fn fused(
        name: &'static str,
        fwd: &Program,
        bwd: &Program,
        inputs: &[&Var],
        scalars: &[f64],
    ) -> Result<Var> {
        if fwd.outputs.len() != 1
            || bwd.inputs != fwd.inputs + 1
            || bwd.outputs.len() != fwd.inputs as usize
            || bwd.scalars != fwd.scalars
        {
            return Err(Error::Argument {
                op: name,
                msg: format!(
                    "backward program does not match the forward: forward has {} inputs, {} outputs, {} scalars; \
                     backward has {} inputs, {} outputs, {} scalars",
                    fwd.inputs,
                    fwd.outputs.len(),
                    fwd.scalars,
                    bwd.inputs,
                    bwd.outputs.len(),
                    bwd.scalars
                ),
            });
        }
        let values: Vec<_> = inputs.iter().map(|v| v.value()).collect();
        let y = run_fused(fwd, &values, scalars)?.remove(0);
        let saved: Vec<_> = inputs.iter().map(|v| v.value().clone()).collect();
        let bwd = bwd.clone();
        let scalars = scalars.to_vec();
        Ok(Var::from_op(name, y, inputs, move |g| {
            let mut args: Vec<_> = saved.iter().collect();
            args.push(g);
            let grads = run_fused(&bwd, &args, &scalars)?;
            grads
                .iter()
                .zip(&saved)
                .map(|(gr, x)| gr.sum_to_shape(x.shape()).map(Some))
                .collect()
        }))
    }
}
