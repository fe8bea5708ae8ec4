#[ssm_macros::ssm_block(d_model = 8, d_state = 1, paths = [raster(2), raster(1)])]
pub struct Block;
fn main() {}
