//! Just enough HTTP to read a node's `/status` and `/metrics`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The body of `GET path` from `addr`.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot reach http://{addr}{path}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // HTTP/1.0: the server closes the connection after one plain body.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .with_context(|| format!("sending GET http://{addr}{path}"))?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .with_context(|| format!("reading http://{addr}{path}"))?;
    let reply = String::from_utf8_lossy(&reply);
    let Some((head, body)) = reply.split_once("\r\n\r\n") else {
        bail!("http://{addr}{path} sent no HTTP response");
    };
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("http://{addr}{path} answered {status:?}");
    }
    Ok(body.to_string())
}

/// The value of the Prometheus sample `series` (name and labels exactly as
/// exposed, e.g. `shoal_drops_total{reason="authentication"}`).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_samples() {
        let text = "# HELP x\nshoal_drops_total{reason=\"replay\"} 2\n\
                    shoal_drops_total{reason=\"authentication\"} 17\n";
        assert_eq!(
            sample(text, "shoal_drops_total{reason=\"authentication\"}"),
            Some(17.0)
        );
        assert_eq!(sample(text, "shoal_nothing"), None);
    }
}
