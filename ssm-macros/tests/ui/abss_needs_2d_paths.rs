#[ssm_macros::ssm_block(d_model = 8, d_state = 1, paths = bidirectional, conv = causal(4), views = abss)]
pub struct Block;
fn main() {}
