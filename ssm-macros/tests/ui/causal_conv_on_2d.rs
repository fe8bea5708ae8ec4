#[ssm_macros::ssm_block(d_model = 8, d_state = 1, paths = cross2d, conv = causal(4))]
pub struct Block;
fn main() {}
