from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination


class StrictPageNumberPagination(PageNumberPagination):
    """Page numbers as the schema documents them: an integer from 1.

    A ``page`` that is not one (``0``, ``-1``, ``1.5``, ``abc``, an empty ``?page=``) is a 400
    validation problem naming ``page``; DRF's own class turns ``0`` or ``abc`` into a 404 and reads
    ``?page=`` as page 1. A well-formed page past the last one stays a 404 problem, as before: a
    client walking ``next`` links never asks for one, and one that does learns the page does not
    exist rather than reading an empty page as the end of a list that has since grown or shrunk.
    The first page always exists, empty or not.
    """

    # "last" is not an integer; the schema would have to say so, and no client uses it.
    last_page_strings = ()
    page_query_description = "A page number, from 1. A page past the last one is a 404."

    def get_page_number(self, request, paginator):
        raw = request.query_params.get(self.page_query_param)
        if raw is None:
            return 1
        if not (raw.isascii() and raw.isdigit()) or not raw.strip("0"):
            raise ValidationError({self.page_query_param: ["A page number is an integer from 1."]}, code="invalid")
        # Handed to Django's paginator as the string it is: past the last page (or too long a number
        # to convert at all) is its InvalidPage, which DRF answers with a 404.
        return raw

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1}
        return parameters
