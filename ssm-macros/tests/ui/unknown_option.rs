#[ssm_macros::ssm_block(d_modle = 8, d_state = 1, paths = cross2d)]
pub struct Block;
fn main() {}
