#[ssm_macros::pointwise]
fn power(x: Tensor, y: Tensor) -> Tensor {
    pow(x, y)
}
fn main() {}
