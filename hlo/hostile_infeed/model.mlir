module @hostile_infeed {
  func.func public @main(%arg0: tensor<4xf32>) -> tensor<4xf32> {
    %t = stablehlo.create_token : !stablehlo.token
    %0:2 = "stablehlo.infeed"(%t) {infeed_config = "", layout = [[0]]} : (!stablehlo.token) -> (tensor<4xf32>, !stablehlo.token)
    %1 = stablehlo.add %arg0, %0#0 : tensor<4xf32>
    return %1 : tensor<4xf32>
  }
}
