"""The decoder graph, emitted as the conversion plan (../plan.py) says: no decisions about formats
or operators are made here.

    decoder.py       inputs and outputs, embedding, the layer loop, final norm, LM head
    layers.py        one layer: norms, attention (GroupQueryAttention or RotaryAttention) and the MLP,
                     unfused or as the fused operators of edgellama's library the LayerPlan names
    linear.py        products, embedding gather and LM head for each storage (float, MatMulNBits
                     layout, the file's blocks), by the operator the WeightPlan names
    ops.py           the node and initializer factory (initializers go straight to model.onnx.data)
    context.py       BuildContext: graph, settings, source tensors, plan and error statistics
    genai_config.py  genai_config.json for onnxruntime-genai
"""
