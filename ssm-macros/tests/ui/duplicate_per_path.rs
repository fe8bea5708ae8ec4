#[ssm_macros::ssm_block(d_model = 8, d_state = 1, paths = cross2d, per_path = [x_proj, a, x_proj])]
pub struct Block;
fn main() {}
