// http.createServer on 127.0.0.1, a port the kernel picks; prints the port on stdout.
// argv[2], when given, sets server.keepAliveTimeout in milliseconds (default 5000).
const http = require('http');
const server = http.createServer((req, res) => { res.end('ok\n'); });
if (process.argv[2] !== undefined) server.keepAliveTimeout = Number(process.argv[2]);
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
