"""Pure logic of stageline: definitions, patches, lifecycle, routing, events, codecs.

Nothing here starts a thread, touches a file or imports pykka; the actors and stores
packages carry out what this package decides.
"""
