"""A change feed: a consumer prints DataStore changes pushed over WSS while a writer writes.

Run against any ekoDB-compatible service (the reference server prints these variables):

    EKODB_URL=... EKODB_API_KEY=<admin key> EKODB_CA_BUNDLE=... python -m examples.change_feed

The admin key creates a collection and a consumer key that may read it but not its ``email``
field. The consumer subscribes and streams; a writer thread inserts, updates and deletes.
Each event is printed (``email`` never appears: the subscriber's field rules apply) and
acked; an unacked event would come back after its claim, and a dropped connection is
re-established by the stream itself.
"""

from __future__ import annotations

import threading
import time
import uuid

from ekoclient import Authenticator, Client


def write(client: Client, collection: str) -> None:
    """The other side: a few records inserted, changed and removed."""
    ids = [client.datastore.insert(collection, {"name": name, "email": f"{name}@example.com",
                                                "visits": 0})["id"]
           for name in ("ada", "grace", "linus")]
    time.sleep(0.2)
    client.datastore.update(collection, ids[0], {"visits": 1})
    time.sleep(0.2)
    client.datastore.delete(collection, ids[2])


def main() -> None:
    run = uuid.uuid4().hex[:6]
    collection, subscription = f"people_{run}", f"people-feed-{run}"
    with Client.from_env() as client:
        client.datastore.create_collection(collection)
        consumer_key = client.admin.create_key(
            f"feed-{run}", collection_permissions={
                collection: {"read": True, "exclude_fields": ["email"]},
                f"bus:{subscription}": ["read", "write"]}).api_key
        feed = Authenticator(client).using_credentials(consumer_key).databus
        feed.subscribe(subscription, collections=[collection], ttl=600)

        writer = threading.Thread(target=write, args=(client, collection))
        writer.start()
        expected = 5  # 3 inserts, 1 update, 1 delete (the bus may merge quick repeats)
        seen = 0
        with feed.stream(subscription) as stream:
            for event in stream:
                print(f"{event.timestamp:%H:%M:%S.%f} {event.operation:<6} "
                      f"{event.collection}/{event.record_id[:12]}… {event.content}")
                event.ack()
                seen += 1
                if seen == expected or (not writer.is_alive() and feed.size(subscription) == 0):
                    break
        writer.join()
        feed.unsubscribe(subscription)
        client.datastore.drop_collection(collection)
        print(f"{seen} changes received; nothing left unacked")


if __name__ == "__main__":
    main()
