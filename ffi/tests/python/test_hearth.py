"""hearth-ffi from Python: a store's life, typed errors, and sync.

Run by ffi/tests/python.rs with PYTHONPATH set to a folder holding the
generated hearth_ffi.py and libhearth_ffi.so. Standard library only. Every
wait has a timeout, so a hang fails instead of hanging.

Covers: create a store, create a channel, post, reply, react, read a page
(and the rest of the chat calls, an event after a cancelled next());
close and reopen with the passphrase and read the same page; a wrong
passphrase, a malformed id, an unknown channel, a bad ticket and a closed
store each raise their own HearthError; then a second user joins through an
invite ticket, syncs over 127.0.0.1 and receives the first's new message
as an event from its EventStream (and the first receives the reply);
and the first user links a phone (one code on both, confirmed from the
first device's events), which catches up by sync.
"""

import asyncio
import datetime
import os
import sys
import tempfile
import time

import hearth_ffi as h

WAIT = 30.0
WAIT_TD = datetime.timedelta(seconds=WAIT)
FAST = h.StoreConfig(insecure_fast_kdf=True)
LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def ok(what):
    print(f"ok  {what}", flush=True)


async def step(coro, timeout=WAIT):
    """Await one call, failing after `timeout` seconds."""
    return await asyncio.wait_for(coro, timeout)


async def raises(error, coro):
    """Await `coro`, which must raise `error` (a HearthError variant)."""
    try:
        await step(coro)
    except error as e:
        assert isinstance(e, h.HearthError), type(e)
        return str(e)
    except Exception as e:  # noqa: BLE001 - report what came instead
        raise AssertionError(f"expected {error.__name__}, got {type(e).__name__}: {e}") from e
    raise AssertionError(f"expected {error.__name__}, the call succeeded")


async def until(events, wanted):
    """Events until one satisfies `wanted`; fail with those seen after WAIT."""
    seen = []
    deadline = time.monotonic() + WAIT
    while True:
        left = deadline - time.monotonic()
        try:
            e = await asyncio.wait_for(events.next(), max(left, 0.01))
        except asyncio.TimeoutError:
            raise AssertionError(f"the event never came; seen: {seen}") from None
        assert e is not None, f"the stream ended; seen: {seen}"
        seen.append(e)
        if wanted(e):
            return e, seen


async def first_store(root):
    """Alice's store: a channel, a thread with a reaction; the page read."""
    a = await step(h.Hearth.create(root, "alice's passphrase", "alice", FAST))
    me = a.whoami()
    assert me.name == "alice" and me.dir == root, me
    general = await step(a.create_channel("general"))
    lunch = await step(a.post(general, "lunch?"))
    answer = await step(a.reply(lunch, "yes, 12:30"))
    await step(a.react(lunch, "👍"))
    later = await step(a.post(general, "and coffee after"))
    ok("create, create_channel, post, reply, react")

    page = await step(a.page(general, None, 50))
    assert [m.text for m in page] == ["and coffee after", "lunch?"], page
    top = page[1]
    assert top.id == lunch and top.author == me.user, top
    assert top.reply_count == 1 and page[0].reply_count == 0, page
    assert top.reactions == [h.Reaction(emoji="👍", users=[me.user])], top.reactions
    older = await step(a.page(general, later, 1))
    assert [m.id for m in older] == [lunch], older
    thread = await step(a.thread(lunch))
    assert [r.text for r in thread.replies] == ["yes, 12:30"], thread
    assert thread.replies[0].id == answer and thread.replies[0].reply_to == lunch, thread
    ok("page (newest first, reply count, reaction), page before, thread")

    # A next() given up on (a timeout) loses nothing: the stream goes on.
    events = a.subscribe()
    try:
        e = await asyncio.wait_for(events.next(), 0.05)
        assert not e.is_edited(), f"an edit before the edit: {e}"
    except asyncio.TimeoutError:
        pass  # the usual case: nothing happened since subscribing
    await step(a.edit(later, "and coffee after?"))
    e, _ = await until(events, lambda e: e.is_edited())
    assert e == h.Event.EDITED(channel=general, msg=later, by=me.user, local=True), e
    await step(a.unreact(lunch, "👍"))
    await step(a.react(lunch, "🎉"))
    await step(a.mark_read(general, None))
    assert await step(a.unread(general)) == 0
    channels = await step(a.channels())
    assert [(c.id, c.name, c.messages) for c in channels] == [(general, "general", 3)], channels
    located = await step(a.message(later))
    assert located.channel == general and located.message.edited, located
    assert located.message.text == "and coffee after?", located
    members = await step(a.members(general))
    assert [(m.user, m.name, m.role) for m in members] == [(me.user, "alice", h.Role.OWNER)], members
    stats = await step(a.stats())
    assert stats.channels == 1 and stats.messages == 3, stats
    report = await step(a.verify())
    assert report.problems == [] and report.entries > 0, report
    ok("edit (its event after a cancelled next()), unreact, mark_read, unread, channels, message, members, "
       "stats, verify")
    return a, me, general, await step(a.page(general, None, 50))


async def typed_errors(a, root, general):
    """Bad input is a typed HearthError, never a crash."""
    msg = await raises(h.HearthError.Invalid, a.post("not-an-id", "hi"))
    assert "channel id" in msg, msg
    await raises(h.HearthError.Invalid, a.react("zz", "👍"))
    await raises(h.HearthError.Invalid, a.page(general, "nope", 10))
    unknown = ("0" if general[0] != "0" else "1") + general[1:]
    await raises(h.HearthError.NotFound, a.post(unknown, "hi"))
    await raises(h.HearthError.BadTicket, a.join("not a ticket"))
    await raises(h.HearthError.AlreadyExists, h.Hearth.create(root, "x", "mallory", FAST))
    await raises(h.HearthError.NotAStore, h.Hearth.open(root + "-missing", "x", FAST))
    ok("Invalid (channel id, message id, before), NotFound, BadTicket, AlreadyExists, NotAStore")


async def sync_to_a_second_store(d, a, me, general):
    """Bob joins through an invite, syncs over loopback, gets live events."""
    sa = await step(a.start_sync(h.SyncConfig(listen=[LOOPBACK])))
    addrs = await step(sa.wait_listening(WAIT_TD))
    assert addrs and all(x.startswith("/ip4/127.0.0.1/tcp/") for x in addrs), addrs
    assert all(x.endswith("/p2p/" + sa.peer_id()) for x in addrs), addrs
    await raises(h.HearthError.SyncRunning, a.start_sync(h.SyncConfig()))
    ticket = await step(a.invite(general, addrs, None, 0))
    a_events = a.subscribe()

    b = await step(h.Hearth.create(os.path.join(d, "bob"), "bob's passphrase", "bob", FAST))
    joined = await step(b.join(ticket))
    assert joined in (h.JoinOutcome.PENDING(channel=general, name="general"),
                      h.JoinOutcome.JOINED(channel=general)), joined
    b_events = b.subscribe()
    sb = await step(b.start_sync(h.SyncConfig()))
    peer = await step(sb.connect(addrs, WAIT_TD))
    assert peer == sa.peer_id(), (peer, sa.peer_id())
    report = await step(sb.sync_until_equal(peer, WAIT_TD))
    assert report.refused == [], report
    assert await step(b.channels()) != [], "bob has no channel after syncing"
    b_page = await step(b.page(general, None, 50))
    assert [m.text for m in b_page] == ["and coffee after?", "lunch?"], b_page
    ok(f"invite, join, start_sync on loopback, connect, sync_until_equal ({report.received} entries)")

    welcome = await step(a.post(general, "welcome, bob"))
    e, seen = await until(b_events, lambda e: e.is_message() and e.id == welcome)
    assert e.channel == general and e.author == me.user and not e.local, e
    got = await step(b.message(welcome))
    assert got.message.text == "welcome, bob", got
    ok(f"bob's EventStream: alice's new message arrived ({len(seen)} events read)")

    bob = b.whoami().user
    hi = await step(b.reply(welcome, "thanks!"))
    e, _ = await until(a_events, lambda e: e.is_reply() and e.id == hi)
    assert e.root == welcome and e.author == bob and not e.local, e
    ok("alice's EventStream: bob's reply arrived")

    await link_a_phone(d, a, sa, addrs, me, general)

    await step(sb.stop())
    await step(b.close())
    # A subscription ends with its store.
    while await step(b_events.next()) is not None:
        pass
    await raises(h.HearthError.Closed, b.page(general, None, 1))
    ok("stop, close; the stream ends with its store")


class ShowCode(h.LinkCodeListener):
    """The new device's screen: the code it shows while it is linked."""

    def __init__(self):
        self.codes = []

    def show_code(self, code):
        self.codes.append(code)


async def link_a_phone(d, a, sa, addrs, me, general):
    """Alice links a phone: both show one code, she confirms on the laptop."""
    ticket = await step(a.link_ticket(addrs))
    events = a.subscribe()
    shown = ShowCode()
    phone_dir = os.path.join(d, "alice-phone")
    linking = asyncio.ensure_future(h.Hearth.create_linked(
        phone_dir, "phone passphrase", ticket, FAST, WAIT_TD, shown))
    asked, _ = await until(events, lambda e: e.is_link_requested())
    digits = asked.code.replace(" ", "")
    assert len(digits) == 6 and digits.isdigit(), asked
    assert shown.codes == [asked.code], (shown.codes, asked.code)
    await step(sa.confirm_link(asked.peer, True))
    phone = await step(linking)
    them = phone.whoami()
    assert them.user == me.user and them.name == "alice", (them, me)
    assert them.device != me.device, them
    await until(events, lambda e: e.is_linked())
    # Its channels come with the link; their history by sync.
    assert [c.id for c in await step(phone.channels())] == [general]
    sp = await step(phone.start_sync(h.SyncConfig()))
    peer = await step(sp.connect(addrs, WAIT_TD))
    await step(sp.sync_until_equal(peer, WAIT_TD))
    texts = [m.text for m in await step(phone.page(general, None, 50))]
    assert "welcome, bob" in texts and "lunch?" in texts, texts
    await step(sp.stop())
    await step(phone.close())
    # A ticket is one-time: a second device cannot use it.
    await raises(h.HearthError.Link, h.Hearth.create_linked(
        os.path.join(d, "mallory"), "x", ticket, FAST, datetime.timedelta(seconds=5), ShowCode()))
    ok("link_ticket, create_linked (the code shown on both), confirm_link, the phone catches up; "
       "a used ticket is refused")


async def main():
    with tempfile.TemporaryDirectory() as d:
        root = os.path.join(d, "alice")
        a, me, general, page = await first_store(root)
        await typed_errors(a, root, general)

        await step(a.close())
        await raises(h.HearthError.Closed, a.post(general, "after close"))
        await raises(h.HearthError.WrongPassphrase, h.Hearth.open(root, "wrong", FAST))
        a = await step(h.Hearth.open(root, "alice's passphrase", FAST))
        assert a.whoami() == me, (a.whoami(), me)
        again = await step(a.page(general, None, 50))
        assert again == page, (again, page)
        ok("close; Closed after; WrongPassphrase; reopen reads the same page")

        await sync_to_a_second_store(d, a, me, general)
        await step(a.close())
    ok("all")


if __name__ == "__main__":
    started = time.monotonic()
    asyncio.run(asyncio.wait_for(main(), 180))
    print(f"python test took {time.monotonic() - started:.2f}s", flush=True)
    sys.exit(0)
