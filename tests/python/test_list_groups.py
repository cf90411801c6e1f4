"""ListGroups answers in pages; optd.Client.list_groups follows them."""

import os

import optd
from optd.v1 import optd_pb2 as pb


def test_list_groups_follows_pages(start_server, monkeypatch):
    extra = os.environ.get("OPTD_SERVER_EXTRA_ARGS", "")
    monkeypatch.setenv("OPTD_SERVER_EXTRA_ARGS", f"{extra} --max_list_page_size=3")
    server = start_server()
    c = optd.Client(server.target)
    names = [f"g{i}" for i in range(7)]
    for name in names:
        c.create_group(name, [("a", "float32", (4,))])
    assert [g.group for g in c.list_groups()] == names

    first = c._stub.ListGroups(pb.ListGroupsRequest())
    assert [g.group for g in first.groups] == names[:3]
    assert first.next_page_token
    second = c._stub.ListGroups(pb.ListGroupsRequest(page_token=first.next_page_token))
    assert [g.group for g in second.groups] == names[3:6]
