#[ssm_macros::pointwise]
fn smooth(x: Tensor) -> Tensor {
    softsign(x)
}
fn main() {}
