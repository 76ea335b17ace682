"""The web chat in real browsers (chromium via Playwright) against two real nodes on one Redis.

Every wait is Playwright's ``expect`` or ``wait_for`` with a timeout, never a sleep. Screenshots
of the key steps go to tests/browser/artifacts/ (printed at the start of the session).
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from typing import Any

import pytest

from tests.browser.conftest import PHONE
from tests.support.nodes import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.browser]

PASSWORD = "a long pass phrase 42"
WAIT_MS = 10_000
XSS = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script><b>bold?</b>'

# A stand-in for the browser's Notification (headless chromium shows none): it records what
# the page asks for, and its permission starts at "default" as a new site's does.
NOTIFICATION_SPY = """
window.__notes = [];
window.Notification = class {
  static permission = "default";
  static async requestPermission() { window.Notification.permission = "granted"; return "granted"; }
  constructor(title, options) { window.__notes.push({ title, body: options && options.body }); }
  addEventListener() {}
  close() {}
};
"""

# The page going out of view and back (a headless page is always "visible").
SET_VISIBILITY = """(value) => {
  Object.defineProperty(document, "visibilityState", {get: () => value, configurable: true});
  document.dispatchEvent(new Event("visibilitychange"));
}"""


def expect_(locator: Any) -> Any:
    from playwright.sync_api import expect

    return expect(locator)


def sign_up(page: Any, base: str, username: str) -> None:
    page.goto(f"{base}/accounts/signup/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password confirmation").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect_(page.locator(".who")).to_have_text(username)


def log_in(page: Any, base: str, username: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect_(page.locator(".who")).to_have_text(username)


def open_room(page: Any, base: str, slug: str, node: str) -> None:
    page.goto(f"{base}/r/{slug}/")
    expect_(page.get_by_role("status")).to_have_text(f"Connected · {node}", timeout=WAIT_MS)


def composer(page: Any) -> Any:
    return page.get_by_role("textbox", name="Message")


def say(page: Any, text: str) -> None:
    """Type and send with the keyboard (Enter), as people do."""
    box = composer(page)
    box.fill(text)
    box.press("Enter")


def bodies(page: Any) -> list[str]:
    return [str(t) for t in page.locator("#messages > .message .body").all_inner_texts()]


def message(page: Any, text: str) -> Any:
    return page.locator("#messages > .message").filter(has_text=text)


def test_two_people_on_two_nodes(
    cluster: Cluster,
    browser_factory: Callable[..., Any],
    shot: Callable[[Any, str], None],
) -> None:
    a, b = cluster.add("a"), cluster.add("b")
    alice = browser_factory("alice")
    alice.context.add_init_script(NOTIFICATION_SPY)
    bob = browser_factory("bob", viewport=PHONE)

    # Sign up and log in; alice creates the room from the home page.
    sign_up(alice, a.http, "alice")
    sign_up(bob, b.http, "bob")
    bob.get_by_role("button", name="Log out").click()
    log_in(bob, b.http, "bob")
    alice.goto(f"{a.http}/")
    alice.get_by_label("Slug").fill("book-club")
    alice.get_by_label("Name").fill("Book club")
    alice.get_by_role("button", name="Create room").click()
    alice.wait_for_url(f"{a.http}/r/book-club/")
    expect_(alice.get_by_role("status")).to_have_text("Connected · a", timeout=WAIT_MS)
    open_room(bob, b.http, "book-club", "b")

    # Presence, both ways, across nodes.
    expect_(alice.locator("#online")).to_contain_text("bob", timeout=WAIT_MS)
    expect_(bob.locator("#online")).to_contain_text("alice", timeout=WAIT_MS)
    expect_(bob.locator("#online")).to_contain_text("bob (you)")

    # Chat both ways; a day line above the first message.
    say(alice, "hello from node a")
    expect_(message(bob, "hello from node a")).to_be_visible()
    composer(bob).press_sequentially("hi", delay=20)
    expect_(alice.locator("#typing")).to_have_text("bob is typing…")
    composer(bob).press("Enter")
    expect_(message(alice, "hi")).to_be_visible()
    assert bodies(alice) == bodies(bob) == ["hello from node a", "hi"]
    expect_(alice.locator("#messages > .day").first).to_have_text("Today")
    shot(alice, "1-chat-desktop")
    shot(bob, "1-chat-phone")
    assert bob.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], "no sideways"

    # Edit (ArrowUp in the empty composer edits one's last message) and delete.
    composer(alice).press("ArrowUp")
    edit_box = alice.locator(".edit-form textarea")
    edit_box.fill("hello from node a, edited")
    edit_box.press("Enter")
    expect_(message(bob, "hello from node a, edited").locator(".edited")).to_be_visible()
    bob.on("dialog", lambda dialog: dialog.accept())
    message(bob, "hi").hover()  # the actions show on hover or focus
    message(bob, "hi").get_by_role("button", name="Delete").click()
    expect_(alice.locator("#messages > .message.deleted .body")).to_have_text("message deleted")

    # Notifications are asked for by a click, never on load.
    assert alice.evaluate("Notification.permission") == "default"
    alice.get_by_role("button", name="Notify me of mentions").click()
    expect_(alice.get_by_role("button", name="Notify me of mentions")).to_be_hidden()

    # A mention, completed from presence with the keyboard, with a link; alice is not looking.
    alice.evaluate("document.hasFocus = () => false")
    composer(bob).press_sequentially("@al", delay=20)
    option = bob.get_by_role("option", name="alice")
    expect_(option).to_be_visible()
    shot(bob, "2-mention-completion-phone")
    composer(bob).press("Enter")  # takes the name; does not send
    expect_(composer(bob)).to_have_value("@alice ")
    composer(bob).press_sequentially("see https://example.com/a?b=1, ok", delay=5)
    composer(bob).press("Enter")
    mention = message(alice, "see https://example.com/a?b=1")
    expect_(mention).to_have_class(re.compile(r"\bmentions-me\b"))
    expect_(mention.locator(".mention.me")).to_have_text("@alice")
    link = mention.get_by_role("link", name="https://example.com/a?b=1")
    expect_(link).to_have_attribute("href", "https://example.com/a?b=1")
    expect_(link).to_have_attribute("rel", "noopener noreferrer")
    alice.wait_for_function("window.__notes.length === 1", timeout=WAIT_MS)
    note = alice.evaluate("window.__notes[0]")
    assert note["title"] == "bob mentioned you in Book club"
    assert note["body"].startswith("@alice see https://example.com")

    # HTML and script in a body stay text: nothing runs, no element is made of it.
    say(bob, XSS)
    expect_(alice.locator("#messages > .message .body").last).to_have_text(XSS)
    assert alice.evaluate("window.__pwned") is None
    assert bob.evaluate("window.__pwned") is None
    assert alice.locator("#messages img, #messages script, #messages b").count() == 0
    shot(alice, "3-mention-link-and-inert-html")

    # Unread: while alice is on the home page, bob writes twice; the count shows there...
    alice.goto(f"{a.http}/")
    say(bob, "unread one")
    say(bob, "unread two")
    expect_(message(bob, "unread two")).to_be_visible()
    expect_(bob.get_by_role("status")).to_have_text("Connected · b")
    alice.reload()
    badge = alice.locator('.unread-count[data-room="book-club"]')
    expect_(badge).to_have_text("2 unread messages")
    shot(alice, "4-home-unread")

    # ... and the room opens on a "new messages" line above the first of them.
    with alice.expect_response(lambda r: r.url.endswith("/r/book-club/read")) as report:
        alice.get_by_role("link", name=re.compile("Book club")).click()
    assert report.value.ok, "what was seen is recorded"
    divider = alice.get_by_role("separator", name="New messages")
    expect_(divider).to_be_visible(timeout=WAIT_MS)
    after_divider = alice.locator("#new-messages + .message .body")
    expect_(after_divider).to_have_text("unread one")
    shot(alice, "5-new-messages-line")

    # Read now: the home page shows no count for the room any more.
    alice.wait_for_function("document.title === 'Book club · Chat'")
    alice.goto(f"{a.http}/")
    expect_(alice.locator('.unread-count[data-room="book-club"]')).to_have_count(0)

    # The tab title counts what arrives while the page is hidden.
    open_room(alice, a.http, "book-club", "a")
    alice.evaluate(SET_VISIBILITY, "hidden")
    say(bob, "while away")
    alice.wait_for_function("document.title === '(1) Book club · Chat'", timeout=WAIT_MS)
    alice.evaluate(SET_VISIBILITY, "visible")
    alice.wait_for_function("document.title === 'Book club · Chat'", timeout=WAIT_MS)
    expect_(alice.locator("#new-messages + .message .body")).to_have_text("while away")
    assert alice.js_errors == [] and bob.js_errors == []


def test_node_drained_mid_chat_page_moves_to_the_other_node(
    cluster: Cluster,
    browser_factory: Callable[..., Any],
    balancer_factory: Callable[[list[int]], Any],
    shot: Callable[[Any, str], None],
) -> None:
    """Alice's page is behind a balancer (node a first, then b); bob is on b. Node a drains
    (SIGTERM) while both write; alice's page reconnects through the balancer to b and shows
    every message once, in order: the same list as bob's and as the events API."""
    cluster.create_room("lobby")
    a, b = cluster.add("a"), cluster.add("b")
    front = balancer_factory([a.port, b.port])
    alice = browser_factory("alice")
    bob = browser_factory("bob", viewport=PHONE)
    sign_up(alice, front.url, "alice")
    sign_up(bob, b.http, "bob")
    open_room(alice, front.url, "lobby", "a")
    open_room(bob, b.http, "lobby", "b")
    expect_(alice.locator("#online")).to_contain_text("bob", timeout=WAIT_MS)

    expected = []
    for i in range(3):
        for page, who in ((alice, "alice"), (bob, "bob")):
            say(page, f"{who} {i}")
            expected.append(f"{who} {i}")
    expect_(alice.locator("#messages > .message:not(.unsent)")).to_have_count(6)

    a.signal(signal.SIGTERM)  # drain: a hands its rooms over and closes sockets with 1012
    for i in range(3, 6):
        say(bob, f"bob {i}")
        expected.append(f"bob {i}")
        say(alice, f"alice {i}")  # queued while alice's page moves, re-sent once: acked once
        expected.append(f"alice {i}")
    expect_(alice.get_by_role("status")).to_have_text("Connected · b", timeout=30_000)
    assert a.process is not None and a.process.wait(30) == 0

    bob_sees = bob.locator("#messages > .message:not(.unsent) .body")
    alice_sees = alice.locator("#messages > .message:not(.unsent) .body")
    expect_(bob_sees).to_have_count(12, timeout=WAIT_MS)
    expect_(alice_sees).to_have_count(12, timeout=WAIT_MS)
    shot(alice, "1-after-drain-desktop")
    shot(bob, "1-after-drain-phone")
    for page in (alice, bob):
        assert sorted(bodies(page)) == sorted(expected), "every message once"
        assert len(set(bodies(page))) == 12
    assert bodies(alice) == bodies(bob), "the same order on both pages"
    status, log = b.get("/api/rooms/lobby/events?after=0")
    assert status == 200
    in_log = [e["body"] for e in log["events"] if e["type"] == "message"]
    assert bodies(alice) == in_log, "in the log's order"
    # Each person's own messages keep the order they were written in.
    for who in ("alice", "bob"):
        own = [t for t in bodies(alice) if t.startswith(who)]
        assert own == [f"{who} {i}" for i in range(6)]
    assert b.port in front.routed[front.routed.index(a.port) :], "the balancer moved it to b"
    assert alice.js_errors == [] and bob.js_errors == []


def test_scrolling_up_loads_older_messages(
    cluster: Cluster,
    browser_factory: Callable[..., Any],
    shot: Callable[[Any, str], None],
) -> None:
    """A room with more history than the page opens on: scrolling up fetches the rest with
    ``before=``, in order, once each, ending at the first message."""
    cluster.create_room("history")
    a = cluster.add("a", CHAT_RATE_LIMIT="100000/1")
    post_as_bot(a.ws, "history", "filler", [f"old {i:03d}" for i in range(260)])
    page = browser_factory("reader", viewport=PHONE)
    sign_up(page, a.http, "reader")
    open_room(page, a.http, "history", "a")
    expect_(page.locator("#messages > .message").last).to_have_text(re.compile("old 259"))
    first = page.locator("#messages > .message .body").first
    for _ in range(20):  # bounded: each round loads a page of 100 or finds the start
        if first.inner_text() == "old 000":
            break
        older = page.locator("#messages > .message").count()
        page.locator("#messages").evaluate("list => { list.scrollTop = 0; }")
        expect_(page.locator("#messages > .message")).not_to_have_count(older, timeout=WAIT_MS)
    expect_(first).to_have_text("old 000")
    assert bodies(page) == [f"old {i:03d}" for i in range(260)]
    expect_(page.get_by_role("button", name="Load older messages")).to_be_hidden()
    shot(page, "1-scrolled-to-the-start")
    assert page.js_errors == []


def test_connection_states_are_always_shown(
    cluster: Cluster,
    browser_factory: Callable[..., Any],
    shot: Callable[[Any, str], None],
) -> None:
    """Connected (to which node), offline, reconnecting with a countdown and a "Retry now"
    button, and read only: the status line says which, and its button works."""
    cluster.create_room("lobby")
    a = cluster.add("a")
    page = browser_factory("carol", viewport=PHONE)
    sign_up(page, a.http, "carol")
    open_room(page, a.http, "lobby", "a")
    status = page.get_by_role("status")

    page.context.set_offline(True)
    expect_(status).to_have_text("Offline: waiting for the network")
    shot(page, "1-offline")
    page.context.set_offline(False)
    expect_(status).to_have_text("Connected · a", timeout=WAIT_MS)

    a.kill()  # no node at all: the page counts down to its next attempt
    expect_(status).to_have_text(re.compile(r"^Reconnecting in \d+ s…$"), timeout=WAIT_MS)
    retry = page.get_by_role("button", name="Retry now")
    expect_(retry).to_be_visible()
    shot(page, "2-reconnecting")
    say(page, "written while the node was down")
    # "Retry now" tries at once: with two seconds or more left on the countdown, a socket
    # opened within one second is the button's doing.
    expect_(status).to_have_text(re.compile(r"^Reconnecting in ([2-9]|\d\d) s…$"), timeout=30_000)
    with page.expect_websocket(timeout=1000):
        retry.click()
    a.start()  # the same address again; the page's next attempt finds it
    expect_(status).to_have_text("Connected · a", timeout=30_000)
    expect_(retry).to_be_hidden()
    expect_(message(page, "written while the node was down")).not_to_have_class(
        re.compile(r"\bunsent\b"), timeout=WAIT_MS
    )

    reader = browser_factory("anonymous")
    closed = cluster.add("closed", CHAT_ALLOW_GUESTS="0")
    reader.goto(f"{closed.http}/r/lobby/")
    expect_(reader.get_by_role("status")).to_have_text("Read only: log in to chat")
    expect_(reader.get_by_role("textbox", name="Message")).to_have_count(0)
    expect_(message(reader, "written while the node was down")).to_be_visible()
    shot(reader, "3-read-only")
    assert page.js_errors == [] and reader.js_errors == []


# What text.js makes of bodies: [kind, text, href (links) or whether it is the reader (mentions)].
def T(text: str) -> list[Any]:
    return ["text", text, None]


def L(text: str, href: str | None = None) -> list[Any]:
    return ["link", text, href or text]


def M(text: str, me: bool = False) -> list[Any]:
    return ["mention", text, me]


TOKENS = [
    ("plain text", [T("plain text")]),
    ("go to https://a.example/x.", [T("go to "), L("https://a.example/x"), T(".")]),
    ("(see http://a.example/p_(1)) ok",
     [T("(see "), L("http://a.example/p_(1)"), T(") ok")]),
    ("javascript:alert(1) and data:text/html,x", [T("javascript:alert(1) and data:text/html,x")]),
    ("HTTPS://A.EXAMPLE", [L("HTTPS://A.EXAMPLE", "https://a.example/")]),
    ('https://a.example/"onmouseover=alert(1)',
     [L("https://a.example/"), T('"onmouseover=alert(1)')]),
    ("hi @Dora Lee and @bob.", [T("hi "), M("@Dora Lee", True), T(" and "), M("@bob"), T(".")]),
    ("mail dora@example.com", [T("mail dora@example.com")]),
    ("@dorathy is not @dora lee", [M("@dorathy"), T(" is not "), M("@dora lee", True)]),
    ("@dora alone", [M("@dora"), T(" alone")]),
]  # fmt: skip


def test_links_and_mentions_are_built_safely(
    cluster: Cluster, browser_factory: Callable[..., Any]
) -> None:
    """text.js, in the browser: only http(s) URLs become links (href from the URL parser),
    trailing punctuation stays text, mentions match whole names (the reader's may hold a
    space), addresses are not mentions."""
    a = cluster.add("a")
    page = browser_factory("unit")
    page.goto(f"{a.http}/")
    found = page.evaluate(
        """async ([cases, me]) => {
          const { tokenize, mentions } = await import("/static/chat/text.js");
          return {
            pieces: cases.map((body) => tokenize(body, me).map((p) =>
              [p.kind, p.text, p.kind === "link" ? p.href : p.kind === "mention" ? p.me : null])),
            mentions: [mentions("hey @DORA lee!", me), mentions("hey @dora leeds", me),
                       mentions("x@dora lee", me)],
          };
        }""",
        [[body for body, _ in TOKENS], "Dora Lee"],
    )
    for (body, expected), got in zip(TOKENS, found["pieces"], strict=True):
        assert got == expected, body
    assert found["mentions"] == [True, False, False]


def post_as_bot(node_ws: str, slug: str, name: str, bodies_: list[str]) -> None:
    """Messages from a script client (no browser), on its own thread and event loop:
    Playwright's sync API keeps one on the test's thread."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from tests.support.client import ChatClient

    async def post() -> None:
        client = ChatClient(node_ws, slug, name)
        await client.connect()
        for body in bodies_:
            await client.send(body)
        await client.wait_for(lambda: len(client.acks) == len(bodies_), timeout=60)
        await client.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, post()).result(120)


def test_a_guest_keeps_its_place_in_its_session(
    cluster: Cluster,
    browser_factory: Callable[..., Any],
    shot: Callable[[Any, str], None],
) -> None:
    cluster.create_room("lobby")
    a = cluster.add("a")
    post_as_bot(a.ws, "lobby", "early", ["before the guest came"])
    guest = browser_factory("guest", viewport=PHONE)
    guest.goto(f"{a.http}/r/lobby/")
    guest.get_by_label("Your display name").fill("visitor")
    guest.get_by_role("button", name="Join").click()
    expect_(guest.get_by_role("status")).to_have_text("Connected · a", timeout=WAIT_MS)
    with guest.expect_response(lambda r: r.url.endswith("/r/lobby/read")) as report:
        say(guest, "hello, I am new here")
    assert report.value.ok

    guest.goto(f"{a.http}/")
    post_as_bot(a.ws, "lobby", "regular", ["welcome!", "@visitor say hi"])
    guest.reload()
    expect_(guest.locator('.unread-count[data-room="lobby"]')).to_have_text("2 unread messages")
    guest.get_by_role("link", name=re.compile("lobby")).click()
    expect_(guest.locator("#new-messages + .message .body")).to_have_text("welcome!")
    expect_(message(guest, "@visitor say hi")).to_have_class(re.compile(r"\bmentions-me\b"))
    shot(guest, "1-guest-new-messages")
    assert guest.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert guest.js_errors == []
