//! A small HTTP client for tests and the load benchmark: real sockets,
//! HTTP/1.1, whole responses or SSE read event by event. Its SSE reading is
//! deliberately simple (events split on blank lines) and independent of
//! weir's own parser, so a parser bug cannot hide itself.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A shareable pooled client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new pooled client.
pub fn client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(http)
}

/// A whole response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `error.code` of an OpenAI-shaped error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn build(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Request<Full<Bytes>> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(Bytes::from(body))).unwrap()
}

/// Send a request and read the whole response.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> HttpResponse {
    send_with(&client(), method, url, headers, body).await
}

/// Send on a given client.
pub async fn send_with(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> HttpResponse {
    let response = client
        .request(build(method, url, headers, body))
        .await
        .unwrap_or_else(|e| panic!("request to {url} failed: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn auth(key: Option<&str>) -> Vec<(&'static str, String)> {
    key.map(|k| vec![("authorization", format!("Bearer {k}"))])
        .unwrap_or_default()
}

/// POST a JSON body with an optional bearer key.
pub async fn post_json(url: &str, body: &Value, key: Option<&str>) -> HttpResponse {
    let headers = auth(key);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut all = vec![("content-type", "application/json")];
    all.extend(headers);
    send(Method::POST, url, &all, body.to_string().into_bytes()).await
}

/// GET with an optional bearer key.
pub async fn get(url: &str, key: Option<&str>) -> HttpResponse {
    let headers = auth(key);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    send(Method::GET, url, &headers, Vec::new()).await
}

/// A streamed response, read event by event.
pub struct SseReader {
    pub status: u16,
    pub headers: HeaderMap,
    body: Incoming,
    buf: BytesMut,
    /// Everything read so far.
    pub raw: Vec<u8>,
}

impl SseReader {
    /// The next event's `data`, or `None` at the end of the body. Panics if
    /// nothing arrives within `within`.
    pub async fn next_event_within(&mut self, within: Duration) -> Option<String> {
        loop {
            if let Some(end) = find(&self.buf, b"\n\n") {
                let event = self.buf.split_to(end + 2);
                let text = String::from_utf8_lossy(&event[..end]).into_owned();
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if data.is_empty() {
                    continue;
                }
                return Some(data.join("\n"));
            }
            let frame = tokio::time::timeout(within, self.body.frame())
                .await
                .expect("no event arrived in time");
            match frame {
                None => return None,
                Some(Err(_)) => return None,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.raw.extend_from_slice(&data);
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The next event's data (30 s limit).
    pub async fn next_event(&mut self) -> Option<String> {
        self.next_event_within(Duration::from_secs(30)).await
    }

    /// Read to the end.
    pub async fn collect(mut self) -> SseResponse {
        let mut events = Vec::new();
        while let Some(e) = self.next_event().await {
            events.push(e);
        }
        SseResponse {
            status: self.status,
            headers: self.headers,
            events,
            raw: String::from_utf8_lossy(&self.raw).into_owned(),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Open a streamed POST.
pub async fn open_stream(url: &str, body: &Value, key: Option<&str>) -> SseReader {
    open_stream_with(&client(), url, body, key).await
}

/// Open a streamed POST on a given client.
pub async fn open_stream_with(
    client: &HttpClient,
    url: &str,
    body: &Value,
    key: Option<&str>,
) -> SseReader {
    let headers = auth(key);
    let mut all: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    all.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
    let response = client
        .request(build(
            Method::POST,
            url,
            &all,
            body.to_string().into_bytes(),
        ))
        .await
        .unwrap_or_else(|e| panic!("request to {url} failed: {e}"));
    SseReader {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.into_body(),
        buf: BytesMut::new(),
        raw: Vec::new(),
    }
}

/// POST and read the whole stream.
pub async fn stream(url: &str, body: &Value, key: Option<&str>) -> SseResponse {
    open_stream(url, body, key).await.collect().await
}

/// A whole streamed response.
#[derive(Debug, Clone)]
pub struct SseResponse {
    pub status: u16,
    pub headers: HeaderMap,
    /// Each event's data, in order, `[DONE]` included.
    pub events: Vec<String>,
    pub raw: String,
}

impl SseResponse {
    /// Every event but `[DONE]`, as JSON.
    pub fn chunks(&self) -> Vec<Value> {
        self.events
            .iter()
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("bad event {e}: {err}")))
            .collect()
    }

    /// The concatenated content of choice 0.
    pub fn text(&self) -> String {
        self.chunks()
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Did the stream end with `[DONE]`?
    pub fn done(&self) -> bool {
        self.events.last().is_some_and(|e| e == "[DONE]")
    }

    /// The error event, if the stream carried one.
    pub fn error(&self) -> Option<Value> {
        self.chunks().into_iter().find(|c| c.get("error").is_some())
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}
