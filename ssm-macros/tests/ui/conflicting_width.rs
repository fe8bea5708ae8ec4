#[ssm_macros::ssm_block(d_model = 8, d_state = 1, paths = cross2d, expand = 2, ssm_ratio = 2.0)]
pub struct Block;
fn main() {}
