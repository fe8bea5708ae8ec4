#[ssm_macros::ssm_block(d_model = 8, d_state = 0, paths = cross2d)]
pub struct Block;
fn main() {}
