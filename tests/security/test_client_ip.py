"""marketplace.client_ip reads X-Forwarded-For, which the client writes: whatever it sends, the
address found is the one the trusted proxies appended, or the connection's own."""

from __future__ import annotations

import ipaddress

from django.test import RequestFactory, override_settings
from hypothesis import given
from hypothesis import strategies as st

from marketplace.client_ip import client_ip

PEER = "10.0.0.2"
addresses = st.ip_addresses().map(str)


def request_with(forwarded: str | None, peer: str = PEER):
    headers = {} if forwarded is None else {"HTTP_X_FORWARDED_FOR": forwarded}
    return RequestFactory().get("/", REMOTE_ADDR=peer, **headers)


@given(forged=st.text(), client=addresses, inner_proxies=st.lists(addresses, max_size=2))
def test_the_client_is_what_the_proxies_appended_whatever_it_sent_before(forged, client, inner_proxies):
    # Each proxy appends the address it was reached from: the outermost the client's, each inner
    # one the proxy before it. The last one is the connection's peer.
    forwarded = ", ".join([forged, client, *inner_proxies])
    with override_settings(TRUSTED_PROXY_COUNT=1 + len(inner_proxies)):
        assert client_ip(request_with(forwarded)) == client


@given(forwarded=st.one_of(st.none(), st.text()), proxies=st.integers(min_value=0, max_value=3))
def test_any_header_gives_an_address_or_the_peer(forwarded, proxies):
    with override_settings(TRUSTED_PROXY_COUNT=proxies):
        found = client_ip(request_with(forwarded))

    assert found == PEER or str(ipaddress.ip_address(found)) == found


def test_without_a_proxy_the_header_is_ignored():
    with override_settings(TRUSTED_PROXY_COUNT=0):
        assert client_ip(request_with("203.0.113.9")) == PEER


def test_fewer_entries_than_proxies_is_the_peer():
    """The request did not come through every proxy: every entry may be the client's own."""
    with override_settings(TRUSTED_PROXY_COUNT=2):
        assert client_ip(request_with("203.0.113.9")) == PEER
