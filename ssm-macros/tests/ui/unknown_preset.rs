#[ssm_macros::ssm_block(d_model = 8, d_state = 1, paths = crossx)]
pub struct Block;
fn main() {}
