"""Search (text, vector, hybrid) and ekoDB's live change feed, with a key that may not read
the ``notes`` field: it never matches, scores or comes back.

    EKODB_URL=... EKODB_API_KEY=<admin key> EKODB_CA_BUNDLE=... python -m examples.search_and_live
"""

from __future__ import annotations

import threading
import uuid

from ekoclient import Authenticator, Client, where


def main() -> None:
    collection = f"articles_{uuid.uuid4().hex[:6]}"
    with Client.from_env() as client:
        client.datastore.create_collection(collection)
        try:
            client.datastore.batch_insert(collection, [
                {"title": "Intro to machine learning", "team": "ml", "notes": "draft",
                 "embedding": [0.1, 0.9, 0.0]},
                {"title": "Deep learning fundamentals", "team": "ml", "notes": "final",
                 "embedding": [0.2, 0.8, 0.1]},
                {"title": "Growing tomatoes", "team": "garden", "notes": "machine wash",
                 "embedding": [0.9, 0.0, 0.3]},
            ])
            key = client.admin.create_key("reader", collection_permissions={
                collection: {"read": True, "exclude_fields": ["notes"]}}).api_key
            reader = Authenticator(client).using_credentials(key).datastore

            for hit in reader.search(collection, "machne lerning", fuzzy=True):
                print(f"text    {hit.score:.3f} {hit.matched_fields} {hit.record['title']}")
            for hit in reader.search(collection, vector=[0.1, 0.9, 0.0], limit=2,
                                     filter=where("team").eq("ml")):
                print(f"vector  {hit.score:.3f} {hit.record['title']}")
            for hit in reader.search(collection, "tomatoes", vector=[0.1, 0.9, 0.0],
                                     text_weight=0.7, vector_weight=0.3, limit=2):
                print(f"hybrid  {hit.score:.3f} {hit.record['title']}")

            with reader.changes(collection) as feed:
                writer = threading.Thread(target=lambda: client.datastore.insert(
                    collection, {"title": "Live!", "notes": "hidden from the reader"}))
                writer.start()
                note = next(feed)
                writer.join()
                print(f"live    {note.event} {note.records}")
        finally:
            client.datastore.drop_collection(collection)


if __name__ == "__main__":
    main()
