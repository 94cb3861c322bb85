"""TLS for the meter's MQTT link: a client context that verifies the broker against the CA
certificate in the bundle. A module of its own, imported only by a meter whose config names
a CA: every function of a module costs a board's heap, and a plain or CoAP meter has no use
for these.

MicroPython's `tls` (mbedTLS) takes the CA as DER bytes, positionally; a certificate that does
not verify is reported as ValueError at the first write (the handshake runs then), other
failures as OSError. Under CPython (the fleet) cpython_compat.tls_context gives an `ssl`
context, one per CA for the whole process.
"""

try:
    from . import compat
except ImportError:
    import compat


def client_context(config):
    """What asyncio's open_connection takes for TLS to the broker (`ssl`: a context for
    config["mqtt_ca"]; `server_hostname`: the name the broker's certificate must carry,
    config["mqtt_server_name"] or dap_host); None when config["mqtt_tls"] is false (a lab)."""
    if config.get("mqtt_tls") is False:
        return None
    path = config.get("mqtt_ca")
    if not path:
        raise ValueError("mqtt_tls needs mqtt_ca: the broker's CA certificate (DER)")
    with open(path, "rb") as file:
        ca = file.read()
    name = config.get("mqtt_server_name") or config["dap_host"]
    if not compat.IS_MICROPYTHON:  # the fleet and the tests: `ssl`
        try:
            from . import cpython_compat as host
        except ImportError:
            import cpython_compat as host
        return {"ssl": host.tls_context(ca), "server_hostname": name}
    import tls

    context = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    context.verify_mode = tls.CERT_REQUIRED
    context.load_verify_locations(ca)
    return {"ssl": context, "server_hostname": name}
