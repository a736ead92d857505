/** A connection as it may be shown: a URL's password (and secret-looking query values) replaced by ****. */
export function maskConnection(connection: string): string {
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(connection)) return connection;
  try {
    const url = new URL(connection);
    if (url.password) url.password = '****';
    for (const key of [...url.searchParams.keys()]) {
      if (/pass|secret|token|key|sig/i.test(key)) url.searchParams.set(key, '****');
    }
    return url.toString();
  } catch {
    // Unparseable but URL-like: hide everything after the scheme rather than risk a secret.
    return connection.replace(/^([a-z][a-z0-9+.-]*:\/\/).*$/i, '$1****');
  }
}
