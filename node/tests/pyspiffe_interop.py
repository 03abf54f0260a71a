"""Unmodified py-spiffe against a running sigil agent (driven by node/tests/api_cli.rs).

Usage: python pyspiffe_interop.py <socket path> <trust domain> <expected SPIFFE ID>

Checks every Workload API call the issue names, on one client (so one HTTP/2 connection and
its HPACK dynamic table serve many requests), and prints one JSON object with what it saw.
Exits non-zero with a message on the first failed check.
"""

import json
import sys

from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import JwtSvid, SpiffeId, TrustDomain, WorkloadApiClient


def check(ok, what):
    if not ok:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def signed_by(cert, authorities):
    for ca in authorities:
        if ca.subject != cert.issuer:
            continue
        try:
            ca.public_key().verify(
                cert.signature,
                cert.tbs_certificate_bytes,
                ec.ECDSA(cert.signature_hash_algorithm),
            )
            return True
        except Exception:
            continue
    return False


def main():
    socket_path, td_name, expected = sys.argv[1], sys.argv[2], sys.argv[3]
    td = TrustDomain(td_name)
    seen = {}
    with WorkloadApiClient(socket_path=f"unix://{socket_path}", default_timeout=10) as client:
        # X.509-SVID
        svid = client.fetch_x509_svid()
        check(str(svid.spiffe_id) == expected, f"x509 spiffe id {svid.spiffe_id} != {expected}")
        check(len(svid.cert_chain) >= 1, "x509 chain not empty")
        seen["x509_spiffe_id"] = str(svid.spiffe_id)
        seen["x509_not_after"] = svid.leaf.not_valid_after_utc.isoformat()

        # X.509 context: the same SVID and a bundle for our trust domain that signed it.
        ctx = client.fetch_x509_context()
        check(len(ctx.x509_svids) >= 1, "context has SVIDs")
        check(str(ctx.default_svid.spiffe_id) == expected, "context default SVID")
        bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(td)
        check(bundle is not None, "context has our trust domain's bundle")
        check(signed_by(ctx.default_svid.leaf, bundle.x509_authorities), "SVID chains to the bundle")
        seen["x509_authorities"] = len(bundle.x509_authorities)

        bundles = client.fetch_x509_bundles()
        check(bundles.get_bundle_for_trust_domain(td) is not None, "x509 bundles")

        # JWT-SVID, JWT bundles, validation (locally and through the Workload API).
        jwt = client.fetch_jwt_svid(audience={"interop"})
        check(str(jwt.spiffe_id) == expected, f"jwt spiffe id {jwt.spiffe_id}")
        check(jwt.audience == {"interop"}, f"jwt audience {jwt.audience}")
        jwt_bundles = client.fetch_jwt_bundles()
        jwt_bundle = jwt_bundles.get_bundle_for_trust_domain(td)
        check(jwt_bundle is not None, "jwt bundle for our trust domain")
        validated = JwtSvid.parse_and_validate(jwt.token, jwt_bundle, {"interop"})
        check(str(validated.spiffe_id) == expected, "jwt validates locally")
        remote = client.validate_jwt_svid(jwt.token, "interop")
        check(str(remote.spiffe_id) == expected, "jwt validates through the Workload API")
        seen["jwt_spiffe_id"] = str(jwt.spiffe_id)
        seen["jwt_authorities"] = len(jwt_bundle.jwt_authorities)

        # The same subject asked for explicitly.
        again = client.fetch_jwt_svid(audience={"interop"}, subject=SpiffeId(expected))
        check(str(again.spiffe_id) == expected, "jwt for an explicit subject")

        # A wrong audience is rejected, locally and by the agent.
        try:
            JwtSvid.parse_and_validate(jwt.token, jwt_bundle, {"someone-else"})
            check(False, "local validation accepted a wrong audience")
        except Exception as e:  # py-spiffe raises InvalidTokenError
            seen["wrong_audience_local"] = f"{type(e).__name__}: {e}"
        try:
            client.validate_jwt_svid(jwt.token, "someone-else")
            check(False, "the agent accepted a wrong audience")
        except Exception as e:
            seen["wrong_audience_agent"] = f"{type(e).__name__}: {e}"

        # Many calls on the same connection keep working (HPACK dynamic table in use).
        for _ in range(20):
            check(str(client.fetch_x509_svid().spiffe_id) == expected, "repeated fetch")
        seen["repeated_fetches"] = 20
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
