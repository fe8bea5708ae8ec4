#[ssm_macros::ssm_block(d_model = 8, d_state = 1, paths = cross2d)]
pub struct Block {
    weights: Vec<f32>,
}
fn main() {}
