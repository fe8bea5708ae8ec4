#[ssm_macros::ssm_block(d_model = 8, d_state = 1, paths = [order(0, 2)])]
pub struct Block;
fn main() {}
