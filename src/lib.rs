//! N-API bindings for peer-buckets (placeholder while the engine is written).
