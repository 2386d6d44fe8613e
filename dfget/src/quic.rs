//! QUIC endpoint set-up for the peer piece protocol.
//!
//! Each peer runs one endpoint that both serves and fetches. Certificates are self-signed and
//! not verified: peer identity is not what protects the data. Every piece is checked against the
//! sha256 the supernode published before it is written or served, so a peer (or anyone in the
//! path) can at worst waste bandwidth, never inject bytes. TLS still encrypts transfers.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use quinn::{
    ClientConfig, Endpoint, EndpointConfig, ServerConfig, TransportConfig, VarInt,
    crypto::rustls::{QuicClientConfig, QuicServerConfig},
};
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
};
use tracing::{debug, info};

/// ALPN of the peer protocol.
pub const ALPN: &[u8] = b"damselfly-piece/1";

/// Server name used in the (unverified) handshake.
pub const SERVER_NAME: &str = "damselfly-peer";

/// Why the endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum QuicSetupError {
    /// Certificate generation failed.
    #[error("generating the peer certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// TLS configuration failed.
    #[error("configuring TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// QUIC crypto configuration failed.
    #[error("configuring QUIC crypto: {0}")]
    Crypto(String),
    /// Binding the UDP socket failed.
    #[error("binding UDP {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

fn transport() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    // Pieces are up to 16 MiB; windows of a few pieces keep a loopback or LAN path full.
    t.stream_receive_window(VarInt::from_u32(32 << 20));
    t.receive_window(VarInt::from_u32(128 << 20));
    t.send_window(128 << 20);
    t.max_concurrent_bidi_streams(VarInt::from_u32(64));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    // Notice a vanished peer within seconds, not minutes.
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    if let Ok(idle) = Duration::from_secs(10).try_into() {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

/// Binds a QUIC endpoint on `addr` that serves the piece protocol and can dial other peers.
///
/// # Errors
/// Certificate, TLS or socket set-up failed.
pub fn endpoint(addr: SocketAddr) -> Result<Endpoint, QuicSetupError> {
    let provider = Arc::new(ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])?;
    let cert_der = CertificateDer::from(cert.cert);
    let key = PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());

    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key.into())?;
    server_tls.alpn_protocols = vec![ALPN.to_vec()];
    let server_crypto = QuicServerConfig::try_from(server_tls)
        .map_err(|e| QuicSetupError::Crypto(e.to_string()))?;
    let mut server = ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport());

    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyPeerCert(provider)))
        .with_no_client_auth();
    client_tls.alpn_protocols = vec![ALPN.to_vec()];
    let client_crypto = QuicClientConfig::try_from(client_tls)
        .map_err(|e| QuicSetupError::Crypto(e.to_string()))?;
    let mut client = ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport());

    let bind = |source| QuicSetupError::Bind { addr, source };
    let socket = udp_socket(addr).map_err(bind)?;
    let runtime = Arc::new(quinn::TokioRuntime);
    let mut endpoint =
        Endpoint::new(EndpointConfig::default(), Some(server), socket, runtime).map_err(bind)?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// Socket buffer size asked for in each direction. The kernel caps it at
/// `net.core.rmem_max` / `wmem_max`.
pub const SOCKET_BUFFER: usize = 8 << 20;

/// A UDP socket bound to `addr` with large kernel buffers. Linux's default receive buffer
/// (208 KiB) overflows under a burst of a few dozen QUIC packets; every datagram dropped there
/// is a loss to the congestion controller, which then halves the sending rate.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack where the system allows it, as `std` binds `[::]` by default.
        let _ = socket.set_only_v6(false);
    }
    // Linux reports twice the usable size it granted.
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER) {
        debug!(error = %e, "cannot set the UDP receive buffer size");
    }
    let granted = socket.recv_buffer_size().unwrap_or(0) / 2;
    if granted < SOCKET_BUFFER / 2 {
        info!(
            granted,
            "UDP receive buffer capped by the kernel: raise net.core.rmem_max"
        );
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER) {
        debug!(error = %e, "cannot set the UDP send buffer size");
    }
    let granted = socket.send_buffer_size().unwrap_or(0) / 2;
    if granted < SOCKET_BUFFER / 2 {
        info!(
            granted,
            "UDP send buffer capped by the kernel: raise net.core.wmem_max"
        );
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Accepts any peer certificate but still checks the handshake signature, so the session key
/// belongs to whoever holds the presented certificate. See the module doc for why that is
/// enough.
#[derive(Debug)]
struct AnyPeerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyPeerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
