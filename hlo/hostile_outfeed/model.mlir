module @hostile_outfeed {
  func.func public @main(%arg0: tensor<4xf32>) -> tensor<4xf32> {
    %t = stablehlo.create_token : !stablehlo.token
    %t1 = "stablehlo.outfeed"(%arg0, %t) {outfeed_config = ""} : (tensor<4xf32>, !stablehlo.token) -> !stablehlo.token
    %1 = stablehlo.add %arg0, %arg0 : tensor<4xf32>
    return %1 : tensor<4xf32>
  }
}
