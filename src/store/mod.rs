//! Time-series stores (PostgreSQL/TimescaleDB, InfluxDB).
