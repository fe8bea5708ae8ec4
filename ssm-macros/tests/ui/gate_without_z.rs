#[ssm_macros::ssm_block(d_model = 8, d_state = 1, paths = cross2d, gate = silu, z = false)]
pub struct Block;
fn main() {}
