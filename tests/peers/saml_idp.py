#!/usr/bin/env python3
"""A SAML 2.0 identity provider for the tests, built on pysaml2 (its SAML
classes, and its xmlsec1 backend to sign: the Debian `xmlsec1` binary).

Started by tests/tests/sso.rs; listens on 127.0.0.1 on a free port and
prints `listening on http://127.0.0.1:PORT` once ready. Two RSA keys are
made at start: the IdP's own (in its metadata) and an "other" key nobody
trusts.

  GET /metadata                 the IdP metadata (signing certificate, the
                                HTTP-Redirect SingleSignOnService below)
  GET /sso?SAMLRequest=..&RelayState=..&case=..&email=..&groups=a,b&name=..
                                answers an AuthnRequest with an HTML form
                                that posts SAMLResponse + RelayState to the
                                request's AssertionConsumerServiceURL
  GET /unsolicited?acs=..&audience=..&case=..&email=..
                                the same, IdP-initiated (no InResponseTo)

`case` picks what the response is:
  good        the assertion signed with the IdP key (the default)
  unsigned    nothing signed
  other-key   the assertion signed with the other key (its certificate in
              KeyInfo, which a good SP ignores)
  wrapped     XML signature wrapping: a forged unsigned assertion (for
              `email`) placed before a genuinely signed one (for
              `victim`, default victim@example.com)
  expired     signed, but issued 20 minutes ago and expired 10 minutes ago
  audience    signed, for another audience (https://wrong.example/sp)
  recipient   signed, with Recipient and Destination another SP's ACS
  comment     signed for `email`, then an XML comment is slipped into the
              NameID and the email value after `cut` characters: an SP that
              ignores comments when verifying and reads only the first text
              node sees a shorter, different address
"""

import atexit
import base64
import datetime
import html
import os
import shutil
import sys
import tempfile
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from saml2 import saml, samlp
from saml2.s_utils import decode_base64_and_inflate, sid
from saml2.sigver import CryptoBackendXmlSec1, SecurityContext, get_xmlsec_binary, pre_signature_part

WORK = tempfile.mkdtemp(prefix="mobius-saml-idp-")
atexit.register(shutil.rmtree, WORK, True)


def make_key(name):
    """An RSA key and a self-signed certificate, as PEM files."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_file = os.path.join(WORK, f"{name}.key")
    cert_file = os.path.join(WORK, f"{name}.crt")
    with open(key_file, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    with open(cert_file, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    cert_b64 = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    return key_file, cert_file, cert_b64


IDP_KEY, IDP_CERT, IDP_CERT_B64 = make_key("idp")
OTHER_KEY, OTHER_CERT, OTHER_CERT_B64 = make_key("other")
CRYPTO = CryptoBackendXmlSec1(get_xmlsec_binary(["/usr/bin"]))
SIGNER = SecurityContext(CRYPTO, key_file=IDP_KEY, cert_file=IDP_CERT)
BASE = None  # set once the port is known


def entity_id():
    return f"{BASE}/metadata"


def stamp(offset_seconds=0):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset_seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def metadata():
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" entityID="{entity_id()}">
  <md:IDPSSODescriptor WantAuthnRequestsSigned="false" protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
    <md:KeyDescriptor use="signing">
      <ds:KeyInfo><ds:X509Data><ds:X509Certificate>{IDP_CERT_B64}</ds:X509Certificate></ds:X509Data></ds:KeyInfo>
    </md:KeyDescriptor>
    <md:NameIDFormat>urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress</md:NameIDFormat>
    <md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="{BASE}/sso"/>
  </md:IDPSSODescriptor>
</md:EntityDescriptor>
"""


def assertion(email, groups, name, audience, acs, in_response_to, issued, expires):
    attributes = [
        saml.Attribute(
            name="email",
            name_format=saml.NAME_FORMAT_BASIC,
            attribute_value=[saml.AttributeValue(text=email)],
        )
    ]
    if name:
        attributes.append(
            saml.Attribute(
                name="displayName",
                name_format=saml.NAME_FORMAT_BASIC,
                attribute_value=[saml.AttributeValue(text=name)],
            )
        )
    if groups:
        attributes.append(
            saml.Attribute(
                name="groups",
                name_format=saml.NAME_FORMAT_BASIC,
                attribute_value=[saml.AttributeValue(text=g) for g in groups],
            )
        )
    return saml.Assertion(
        id="_" + sid(),
        version="2.0",
        issue_instant=issued,
        issuer=saml.Issuer(text=entity_id(), format=saml.NAMEID_FORMAT_ENTITY),
        subject=saml.Subject(
            name_id=saml.NameID(format=saml.NAMEID_FORMAT_EMAILADDRESS, text=email),
            subject_confirmation=[
                saml.SubjectConfirmation(
                    method=saml.SCM_BEARER,
                    subject_confirmation_data=saml.SubjectConfirmationData(
                        in_response_to=in_response_to,
                        recipient=acs,
                        not_on_or_after=expires,
                    ),
                )
            ],
        ),
        conditions=saml.Conditions(
            not_before=issued,
            not_on_or_after=expires,
            audience_restriction=[saml.AudienceRestriction(audience=[saml.Audience(text=audience)])],
        ),
        authn_statement=[
            saml.AuthnStatement(
                authn_instant=issued,
                session_index=sid(),
                authn_context=saml.AuthnContext(
                    authn_context_class_ref=saml.AuthnContextClassRef(text=saml.AUTHN_PASSWORD_PROTECTED)
                ),
            )
        ],
        attribute_statement=[saml.AttributeStatement(attribute=attributes)],
    )


def xml_of(element):
    text = element.to_string()
    text = text.decode() if isinstance(text, bytes) else text
    if text.startswith("<?xml"):
        text = text[text.index("?>") + 2 :].lstrip()
    return text


def build_response(params, acs, audience, in_response_to):
    case = params.get("case", "good")
    email = params.get("email", "someone@example.com")
    groups = [g for g in params.get("groups", "").split(",") if g]
    name = params.get("name")
    issued, expires = stamp(), stamp(300)
    if case == "expired":
        issued, expires = stamp(-1200), stamp(-600)
    if case == "audience":
        audience = "https://wrong.example/sp"
    if case == "recipient":
        # Made for another SP's ACS (still posted to this one by the form).
        acs = "https://elsewhere.example/saml/acs"
    subject_email = params.get("victim", "victim@example.com") if case == "wrapped" else email
    signed = assertion(subject_email, groups, name, audience, acs, in_response_to, issued, expires)
    response = samlp.Response(
        id="_" + sid(),
        version="2.0",
        issue_instant=stamp(),
        destination=acs,
        in_response_to=in_response_to,
        issuer=saml.Issuer(text=entity_id(), format=saml.NAMEID_FORMAT_ENTITY),
        status=samlp.Status(status_code=samlp.StatusCode(value=samlp.STATUS_SUCCESS)),
        assertion=signed,
    )
    if case == "unsigned":
        return xml_of(response)
    key_file, cert_b64 = (OTHER_KEY, OTHER_CERT_B64) if case == "other-key" else (IDP_KEY, IDP_CERT_B64)
    signed.signature = pre_signature_part(
        signed.id,
        cert_b64,
        sign_alg="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
        digest_alg="http://www.w3.org/2001/04/xmlenc#sha256",
    )
    xml = SIGNER.sign_statement(
        xml_of(response),
        "urn:oasis:names:tc:SAML:2.0:assertion:Assertion",
        key_file=key_file,
        node_id=signed.id,
    )
    xml = xml.decode() if isinstance(xml, bytes) else xml
    if xml.startswith("<?xml"):
        xml = xml[xml.index("?>") + 2 :].lstrip()
    if case == "comment":
        cut = int(params.get("cut", "0"))
        xml = xml.replace(f">{email}<", f">{email[:cut]}<!---->{email[cut:]}<")
    if case == "wrapped":
        # The forged assertion goes first, right before the signed one:
        # an SP that checks "a signature verifies" and then reads the first
        # assertion signs in `email` instead of the victim.
        forged = assertion(email, groups, name, audience, acs, in_response_to, issued, expires)
        marker = f'ID="{signed.id}"'
        at = xml.rindex("<", 0, xml.index(marker))
        xml = xml[:at] + xml_of(forged) + xml[at:]
    return xml


def form(acs, saml_response, relay_state):
    encoded = base64.b64encode(saml_response.encode()).decode()
    relay = (
        f'<input type="hidden" name="RelayState" value="{html.escape(relay_state)}"/>' if relay_state else ""
    )
    return f"""<!DOCTYPE html>
<html><body onload="document.forms[0].submit()">
<form method="post" action="{html.escape(acs)}">
<input type="hidden" name="SAMLResponse" value="{encoded}"/>
{relay}
<noscript><button type="submit">Continue</button></noscript>
</form></body></html>
"""


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write("saml_idp: " + (fmt % args) + "\n")

    def answer(self, status, body, content_type="text/html; charset=utf-8"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        params = dict(urllib.parse.parse_qsl(url.query))
        try:
            if url.path == "/metadata":
                return self.answer(200, metadata(), "application/samlmetadata+xml")
            if url.path == "/sso":
                request = samlp.authn_request_from_string(decode_base64_and_inflate(params["SAMLRequest"]))
                acs = request.assertion_consumer_service_url
                audience = request.issuer.text
                xml = build_response(params, acs, audience, request.id)
                return self.answer(200, form(acs, xml, params.get("RelayState")))
            if url.path == "/unsolicited":
                acs = params["acs"]
                xml = build_response(params, acs, params["audience"], None)
                return self.answer(200, form(acs, xml, params.get("RelayState")))
            return self.answer(404, "not found\n", "text/plain")
        except Exception as err:  # the test reads the message
            return self.answer(400, f"saml_idp: {type(err).__name__}: {err}\n", "text/plain")


def main():
    global BASE
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    BASE = f"http://127.0.0.1:{server.server_address[1]}"
    print(f"listening on {BASE}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
