//! Integration tests of fencegate-client against a throwaway PostgreSQL cluster, the
//! proxy as `fencegate serve` runs it, a real etcd, and psycopg (one test binary, so one
//! cluster for all of them).
#![forbid(unsafe_code)]

mod etcd;
mod etcd_server;
mod fenced_tx;
mod lease;
mod psycopg;
mod relay;
mod support;
