"""The analysts' side of the store: the connection string of their read-only role (migration 020), which reads the
documented views of one schema and nothing else (docs/analysts.md)."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict

from feedback.store import analyst_role, connect_kwargs


class AnalystRoleMissing(Exception):
    """The analysts' role does not exist and the configured database user may not create it."""


def analyst_url(database_url: str, schema: str) -> str:
    """The ``postgresql://`` URL analysts connect with: the store's address as the role ``<schema>_analyst``, without
    the operator's password (a server that asks for one needs the role given a password by an administrator).

    Grants the role the schema's views first (creating it when it is missing and this user may), so the URL works
    the moment it is printed; the same call twice is harmless.
    """
    with psycopg.connect(database_url, connect_timeout=10, **connect_kwargs(schema)) as conn:
        if not conn.execute("SELECT grant_analyst_views()").fetchone()[0]:
            role = analyst_role(schema)
            msg = (f"the role {role} does not exist and this database user may not create it: an administrator runs "
                   f"CREATE ROLE {role} LOGIN, then this command again")
            raise AnalystRoleMissing(msg)
    info = {k: v for k, v in conninfo_to_dict(database_url).items() if v is not None}
    info.pop("password", None)
    info.pop("user", None)
    host = info.pop("host", "")
    port = info.pop("port", "")
    dbname = info.pop("dbname", "")
    address = f"[{host}]" if ":" in host else quote(host, safe="")  # an IPv6 address, or a socket folder
    if port:
        address += f":{port}"
    info["options"] = f"-c search_path={schema}"  # whatever defaults the role was given
    query = f"?{urlencode(info, quote_via=quote)}"
    return f"postgresql://{quote(analyst_role(schema), safe='')}@{address}/{quote(dbname, safe='')}{query}"
