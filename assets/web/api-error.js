// A refusal, from either back end: the message (one line that says what to do), the request
// field it is about (the form shows it beside that field) and the HTTP status it has or would
// have.

export class ApiError extends Error {
  constructor(message, field, status) {
    super(message);
    this.field = field || null;
    this.status = status;
  }
}
