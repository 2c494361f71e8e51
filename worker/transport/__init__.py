"""gRPC transport: Spider's protos, the generated stubs, the trio bridge and the port clients."""
