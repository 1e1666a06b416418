//! Control plane: Istio config and registry to Envoy xDS. Built under issue 4.
