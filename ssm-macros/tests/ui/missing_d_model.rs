#[ssm_macros::ssm_block(d_state = 1, paths = cross2d)]
pub struct Block;
fn main() {}
