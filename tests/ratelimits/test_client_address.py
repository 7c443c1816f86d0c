"""Who an unauthenticated request is counted as, read from X-Forwarded-For: untrusted bytes, so
property-based. Whatever the header holds, the answer is an address the limits can key on, and a
client behind our proxies cannot choose it."""

import ipaddress

from django.test import RequestFactory, override_settings
from hypothesis import assume, example, given
from hypothesis import strategies as st

from marketplace.ratelimits.throttles import UNKNOWN_ADDRESS, client_address, client_identity

addresses = st.ip_addresses()
# Entries as proxies and clients write them, and anything else.
entries = st.one_of(addresses.map(str), st.text(alphabet="0123456789abcdefABCDEF:.[]%/ -", max_size=45), st.text())
forwarded_for = st.one_of(
    st.text(),
    st.lists(entries, max_size=6).flatmap(
        lambda hops: st.sampled_from([",", ", ", " ,"]).map(lambda sep: sep.join(hops))
    ),
)
remote_addrs = st.one_of(addresses.map(str), st.just(""), st.text(max_size=50))


def counted_as(*, forwarded: str | None, remote_addr: str, trusted_proxies: int) -> str:
    meta = {"REMOTE_ADDR": remote_addr}
    if forwarded is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded
    with override_settings(TRUSTED_PROXY_COUNT=trusted_proxies):
        return client_address(RequestFactory().get("/api/products/", **meta))


def is_identity(value: str) -> bool:
    """An IPv4 address or an IPv6 /64 in their canonical text, or UNKNOWN_ADDRESS."""
    if value == UNKNOWN_ADDRESS:
        return True
    if "/" in value:
        network = ipaddress.IPv6Network(value)
        return network.prefixlen == 64 and str(network) == value
    return str(ipaddress.IPv4Address(value)) == value


@given(forwarded=st.one_of(st.none(), forwarded_for), remote_addr=remote_addrs, trusted_proxies=st.integers(0, 3))
@example(forwarded="1.2.3.4" * 10_000, remote_addr="10.0.0.1", trusted_proxies=1)
@example(forwarded=",,,", remote_addr="", trusted_proxies=2)
def test_any_header_gives_an_identity_to_count_by(forwarded, remote_addr, trusted_proxies):
    identity = counted_as(forwarded=forwarded, remote_addr=remote_addr, trusted_proxies=trusted_proxies)

    assert is_identity(identity)
    assert len(identity) <= 43


@given(
    client_wrote=st.one_of(st.just(""), forwarded_for),
    proxies_wrote=st.integers(1, 3).flatmap(lambda n: st.lists(addresses, min_size=n, max_size=n)),
    remote_addr=addresses.map(str),
)
def test_behind_trusted_proxies_the_client_cannot_choose_who_it_is_counted_as(client_wrote, proxies_wrote, remote_addr):
    """Each proxy appends the address it was reached from; what the client sent stays to the left."""
    header = ", ".join([client_wrote, *map(str, proxies_wrote)])

    identity = counted_as(forwarded=header, remote_addr=remote_addr, trusted_proxies=len(proxies_wrote))

    assert identity == client_identity(str(proxies_wrote[0]))


@given(forwarded=forwarded_for, remote_addr=addresses.map(str))
def test_with_no_trusted_proxy_the_header_is_ignored(forwarded, remote_addr):
    identity = counted_as(forwarded=forwarded, remote_addr=remote_addr, trusted_proxies=0)

    assert identity == counted_as(forwarded=None, remote_addr=remote_addr, trusted_proxies=0)
    assert identity == client_identity(remote_addr)


@given(address=st.ip_addresses(v=6), other_interface=st.integers(0, 2**64 - 1))
def test_an_ipv6_client_is_its_64_whichever_address_it_picks_in_it(address, other_interface):
    sibling = ipaddress.IPv6Address((int(address) >> 64 << 64) | other_interface)
    # ::ffff:0:0/96 inside ::/64 holds IPv4 clients, each counted as its IPv4 address.
    assume(address.ipv4_mapped is None and sibling.ipv4_mapped is None)

    assert client_identity(str(address)) == client_identity(str(sibling))
    assert client_identity(str(address)) == str(ipaddress.IPv6Network(f"{address}/64", strict=False))


@given(address=st.ip_addresses(v=4))
def test_an_ipv4_client_is_its_address_however_it_is_written(address):
    assert client_identity(str(address)) == str(address)
    assert client_identity(f"::ffff:{address}") == str(address)
    assert client_identity(f"  {address} ") == str(address)
