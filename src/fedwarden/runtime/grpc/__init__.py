"""The grpc runtime: server and client processes over gRPC with mutual TLS."""
